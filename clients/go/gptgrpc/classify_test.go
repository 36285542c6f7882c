package gptgrpc

import (
	"fmt"
	"testing"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// Every RPC of the service must be classified as admin or data-plane, so
// that the right token is attached: update adminMethods/dataPlaneMethods
// when the proto gains an RPC.
func TestEveryMethodIsClassified(t *testing.T) {
	svc := gptgrpcv1.File_gptgrpc_v1_gateway_proto.Services().ByName("GPTService")
	methods := svc.Methods()
	for i := 0; i < methods.Len(); i++ {
		full := fmt.Sprintf("/%s/%s", svc.FullName(), methods.Get(i).Name())
		if adminMethods[full] == dataPlaneMethods[full] {
			t.Errorf("%s: classify it in exactly one of adminMethods and dataPlaneMethods (clients/go/gptgrpc/client.go)", full)
		}
	}
	if n := len(adminMethods) + len(dataPlaneMethods); n != methods.Len() {
		t.Errorf("%d classified methods, the service has %d", n, methods.Len())
	}
}
