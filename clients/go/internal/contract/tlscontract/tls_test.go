//go:build contract

// TLS and mutual TLS end to end: the Go client against a gateway that the
// harness starts with certificates made for the run. Run it through the
// harness, once per mode:
//
//	python tests/contract/harness.py --tls  --cwd clients/go -- go test -count=1 -tags contract ./internal/contract/tlscontract/
//	python tests/contract/harness.py --mtls --cwd clients/go -- go test -count=1 -tags contract ./internal/contract/tlscontract/
package tlscontract

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

const harness = "run it through tests/contract/harness.py --tls or --mtls (make contract-test)"

func env(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: %s", name, harness)
	}
	return v
}

func TestTLS(t *testing.T) {
	mode := env(t, "GPT_GRPC_TLS_MODE")
	if mode != "tls" && mode != "mtls" {
		t.Fatalf("GPT_GRPC_TLS_MODE=%q, want tls or mtls", mode)
	}
	target := env(t, "GPT_GRPC_TARGET")
	ca := env(t, "GPT_GRPC_TLS_CA")
	cert, key := env(t, "GPT_GRPC_TLS_CERT"), env(t, "GPT_GRPC_TLS_KEY")
	rogueCert, rogueKey := env(t, "GPT_GRPC_TLS_ROGUE_CERT"), env(t, "GPT_GRPC_TLS_ROGUE_KEY")

	trusted := []gptgrpc.Option{gptgrpc.WithCAFile(ca)}
	if mode == "mtls" {
		trusted = append(trusted, gptgrpc.WithClientCertFiles(cert, key))
	}
	t.Run("trusted client chats", func(t *testing.T) {
		c := dial(t, target, trusted...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := c.ChatCompletion(ctx, &gptgrpcv1.ChatCompletionRequest{Model: "gpt-4o-mini", UserMessage: "over " + mode})
		if err != nil {
			t.Fatalf("ChatCompletion over %s: %v", mode, err)
		}
		if want := "Echo: over " + mode; res.GetContent() != want {
			t.Errorf("content %q, want %q", res.GetContent(), want)
		}
		stream, err := c.StreamChatCompletion(ctx, &gptgrpcv1.StreamChatCompletionRequest{Model: "gpt-4o-mini", UserMessage: "streamed"})
		if err != nil {
			t.Fatal(err)
		}
		content := ""
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			content += msg.GetDelta().GetContent()
		}
		if content != "Echo: streamed" {
			t.Errorf("streamed content %q", content)
		}
	})
	t.Run("plaintext client refused", func(t *testing.T) {
		refused(t, dial(t, target, gptgrpc.WithInsecure()))
	})
	t.Run("client without the CA refused", func(t *testing.T) {
		// System roots only: the gateway's certificate does not verify.
		opts := []gptgrpc.Option{}
		if mode == "mtls" {
			opts = append(opts, gptgrpc.WithClientCertFiles(cert, key))
		}
		refused(t, dial(t, target, opts...))
	})
	if mode == "mtls" {
		t.Run("client without a certificate refused", func(t *testing.T) {
			refused(t, dial(t, target, gptgrpc.WithCAFile(ca)))
		})
		t.Run("client with an untrusted certificate refused", func(t *testing.T) {
			refused(t, dial(t, target, gptgrpc.WithCAFile(ca), gptgrpc.WithClientCertFiles(rogueCert, rogueKey)))
		})
	}
}

func dial(t *testing.T, target string, opts ...gptgrpc.Option) *gptgrpc.Client {
	t.Helper()
	c, err := gptgrpc.Dial(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refused checks that a call fails as UNAVAILABLE: the connection (handshake) is refused,
// so the call never reaches the gateway's handlers.
func refused(t *testing.T, c *gptgrpc.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.CountTokens(ctx, &gptgrpcv1.CountTokensRequest{Model: "gpt-4", Text: "hello world"})
	if err == nil {
		t.Fatalf("the call succeeded (%d tokens), want it refused", res.GetTokenCount())
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("status %s, want Unavailable: %v", code, err)
	}
	t.Logf("refused as expected: %v", err)
}
