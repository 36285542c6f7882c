//go:build contract

// The Go runner of tests/contract/cases.json. Run it through the harness,
// which starts the stand-in and the gateway and sets the environment:
//
//	python tests/contract/harness.py --cwd clients/go -- go test -count=1 -tags contract ./internal/contract/
package contract

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

type caseFile struct {
	Schema   int    `json:"schema"`
	Service  string `json:"service"`
	Defaults struct {
		TimeoutMS int `json:"timeout_ms"`
	} `json:"defaults"`
	Cases []contractCase `json:"cases"`
}

type contractCase struct {
	Name      string            `json:"name"`
	RPC       string            `json:"rpc"`
	Metadata  map[string]string `json:"metadata"`
	Faults    json.RawMessage   `json:"faults"`
	Request   json.RawMessage   `json:"request"`
	TimeoutMS int               `json:"timeout_ms"`
	Expect    json.RawMessage   `json:"expect"`
	Save      map[string]string `json:"save"`
}

type expectation struct {
	Code                 string          `json:"code"`
	Reason               string          `json:"reason"`
	Response             json.RawMessage `json:"response"`
	Stream               *streamExpect   `json:"stream"`
	Error                json.RawMessage `json:"error"`
	UpstreamChatRequests *int            `json:"upstream_chat_requests"`
	UpstreamRequest      json.RawMessage `json:"upstream_request"`
}

type streamExpect struct {
	Content   *string         `json:"content"`
	MinDeltas int             `json:"min_deltas"`
	Summary   json.RawMessage `json:"summary"`
}

var (
	jsonOut  = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}
	jsonIn   = protojson.UnmarshalOptions{}
	envRef   = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	varName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	httpc    = &http.Client{Timeout: 10 * time.Second}
	harness  = "run it through tests/contract/harness.py (make contract-test), which starts the stand-in and the gateway"
	required = []string{"GPT_GRPC_TARGET", "STANDIN_URL", "GPT_GRPC_ADMIN_TOKEN"}
)

func TestContract(t *testing.T) {
	for _, name := range required {
		if os.Getenv(name) == "" {
			t.Fatalf("%s is not set: %s", name, harness)
		}
	}
	path := os.Getenv("CONTRACT_CASES")
	if path == "" {
		path = filepath.Join("..", "..", "..", "..", "tests", "contract", "cases.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the cases: %v", err)
	}
	var file caseFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if file.Schema != 1 || len(file.Cases) == 0 {
		t.Fatalf("%s: want schema 1 with cases, got schema %d and %d cases", path, file.Schema, len(file.Cases))
	}
	svc := gptgrpcv1.File_gptgrpc_v1_gateway_proto.Services().ByName("GPTService")
	if string(svc.FullName()) != file.Service {
		t.Fatalf("cases are for %q, this client knows %q", file.Service, svc.FullName())
	}

	client, err := gptgrpc.Dial(os.Getenv("GPT_GRPC_TARGET"), gptgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	standin := strings.TrimRight(os.Getenv("STANDIN_URL"), "/")

	seen := map[string]bool{}
	saved := map[string]string{} // variables saved by earlier cases ("save")
	for _, c := range file.Cases {
		if seen[c.Name] {
			t.Fatalf("duplicate case name %q", c.Name)
		}
		seen[c.Name] = true
		timeout := c.TimeoutMS
		if timeout == 0 {
			timeout = file.Defaults.TimeoutMS
		}
		t.Run(c.Name, func(t *testing.T) {
			runCase(t, client.Conn(), svc, standin, c, time.Duration(timeout)*time.Millisecond, saved)
		})
	}
}

func runCase(t *testing.T, conn *grpc.ClientConn, svc protoreflect.ServiceDescriptor, standin string, c contractCase, timeout time.Duration, saved map[string]string) {
	var exp expectation
	if err := json.Unmarshal(c.Expect, &exp); err != nil {
		t.Fatalf("expect: %v", err)
	}
	wantCode, ok := codeByName[exp.Code]
	if !ok {
		t.Fatalf("expect.code %q is not a gRPC code name", exp.Code)
	}
	if wantCode != codes.OK && exp.Reason == "" {
		t.Fatalf("expect.reason is required with code %s", exp.Code)
	}
	md := svc.Methods().ByName(protoreflect.Name(c.RPC))
	if md == nil {
		t.Fatalf("rpc %q is not a method of %s", c.RPC, svc.FullName())
	}
	if len(c.Save) > 0 {
		if wantCode != codes.OK || md.IsStreamingServer() || md.IsStreamingClient() {
			t.Fatalf("save needs expect.code OK on a unary RPC")
		}
		for name := range c.Save {
			if !varName.MatchString(name) {
				t.Fatalf("save: bad variable name %q", name)
			}
		}
	}
	req := newMessage(t, md.Input())
	if len(c.Request) > 0 {
		if err := jsonIn.Unmarshal(c.Request, req); err != nil {
			t.Fatalf("request is not a valid %s: %v", md.Input().FullName(), err)
		}
	}

	// 1-2: reset the stand-in and queue the faults.
	standinPost(t, standin+"/_standin/reset", []byte(`{}`))
	if len(c.Faults) > 0 && string(c.Faults) != "[]" && string(c.Faults) != "null" {
		standinPost(t, standin+"/_standin/faults", []byte(fmt.Sprintf(`{"faults":%s}`, c.Faults)))
	}

	// 3: call.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for k, v := range c.Metadata {
		ctx = metadata.AppendToOutgoingContext(ctx, k, expandVars(t, v, saved))
	}
	fullMethod := fmt.Sprintf("/%s/%s", svc.FullName(), md.Name())
	var responses []proto.Message
	var callErr error
	if md.IsStreamingServer() || md.IsStreamingClient() {
		responses, callErr = callStream(ctx, conn, md, fullMethod, req)
	} else {
		resp := newMessage(t, md.Output())
		callErr = conn.Invoke(ctx, fullMethod, req, resp)
		responses = append(responses, resp)
	}

	// 4: check.
	st := status.Convert(callErr)
	if st.Code() != wantCode {
		t.Fatalf("status %s (%q), want %s; details %v", st.Code(), st.Message(), exp.Code, errorView(t, st))
	}
	if wantCode == codes.OK {
		switch {
		case exp.Stream != nil:
			checkStream(t, responses, exp.Stream)
		case len(exp.Response) > 0:
			if len(responses) != 1 {
				t.Fatalf("want one response, got %d", len(responses))
			}
			matchJSON(t, "response", exp.Response, toJSON(t, responses[0]))
		}
	} else {
		view := errorView(t, st)
		checkErrorInvariants(t, st, view)
		if got := view["error_info"].(map[string]any)["reason"]; got != exp.Reason {
			t.Errorf("ErrorInfo.reason = %v, want %s (status %q)", got, exp.Reason, st.Message())
		}
		if len(exp.Error) > 0 {
			matchJSON(t, "error", exp.Error, view)
		}
	}
	if exp.UpstreamChatRequests != nil {
		body := standinGet(t, standin+"/_standin/stats")
		var stats struct {
			Requests int `json:"requests"`
		}
		if err := json.Unmarshal(body, &stats); err != nil {
			t.Fatalf("stand-in stats %s: %v", body, err)
		}
		if stats.Requests != *exp.UpstreamChatRequests {
			t.Errorf("the stand-in received %d chat requests, want %d", stats.Requests, *exp.UpstreamChatRequests)
		}
	}
	if len(exp.UpstreamRequest) > 0 {
		records, err := Decode(standinGet(t, standin+"/_standin/requests"))
		list, ok := records.([]any)
		if err != nil || !ok || len(list) == 0 {
			t.Fatalf("the stand-in recorded no chat request (%v)", err)
		}
		matchJSON(t, "upstream_request", exp.UpstreamRequest, list[len(list)-1].(map[string]any)["body"])
	}

	// 5: save values for later cases (only when everything above passed).
	if len(c.Save) > 0 && !t.Failed() {
		view := toJSON(t, responses[0])
		for name, path := range c.Save {
			v, err := SavedValue(view, path)
			if err != nil {
				t.Fatalf("save %s: %v", name, err)
			}
			saved[name] = v
		}
	}
}

func newMessage(t *testing.T, d protoreflect.MessageDescriptor) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		t.Fatalf("message type %s: %v", d.FullName(), err)
	}
	return mt.New().Interface()
}

func callStream(ctx context.Context, conn *grpc.ClientConn, md protoreflect.MethodDescriptor, fullMethod string, req proto.Message) ([]proto.Message, error) {
	desc := &grpc.StreamDesc{StreamName: string(md.Name()), ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}
	cs, err := conn.NewStream(ctx, desc, fullMethod)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := cs.CloseSend(); err != nil {
		return nil, err
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, err
	}
	var out []proto.Message
	for {
		m := mt.New().Interface()
		err := cs.RecvMsg(m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func checkStream(t *testing.T, responses []proto.Message, exp *streamExpect) {
	t.Helper()
	if len(responses) == 0 {
		t.Fatal("the stream sent no message")
	}
	var content strings.Builder
	deltas := 0
	var summary any
	for i, r := range responses {
		m := toJSON(t, r).(map[string]any)
		last := i == len(responses)-1
		delta, isDelta := m["delta"].(map[string]any)
		s, isSummary := m["summary"]
		switch {
		case isDelta && !last:
			deltas++
			c, _ := delta["content"].(string)
			content.WriteString(c)
		case isSummary && last:
			summary = s
		default:
			t.Fatalf("stream message %d of %d is %s: want deltas, then one summary last", i+1, len(responses), show(m))
		}
	}
	if summary == nil {
		t.Fatal("the stream ended without a summary")
	}
	if exp.Content != nil && content.String() != *exp.Content {
		t.Errorf("deltas concatenate to %q, want %q", content.String(), *exp.Content)
	}
	if deltas < exp.MinDeltas {
		t.Errorf("%d deltas, want at least %d", deltas, exp.MinDeltas)
	}
	if len(exp.Summary) > 0 {
		matchJSON(t, "summary", exp.Summary, summary)
	}
}

// errorView builds the error view of tests/contract/README.md; "error_info"
// holds the first ErrorInfo (checkErrorInvariants requires exactly one).
func errorView(t *testing.T, st *status.Status) map[string]any {
	view := map[string]any{"code": codeName(st.Code()), "message": st.Message()}
	for _, d := range st.Proto().GetDetails() {
		m, err := d.UnmarshalNew()
		if err != nil {
			continue
		}
		var key string
		switch m.(type) {
		case *errdetails.ErrorInfo:
			key = "error_info"
		case *errdetails.RetryInfo:
			key = "retry_info"
		case *errdetails.BadRequest:
			key = "bad_request"
		default:
			continue
		}
		if _, dup := view[key]; !dup {
			view[key] = toJSON(t, m)
		}
	}
	return view
}

var httpStatus = regexp.MustCompile(`^[1-5][0-9][0-9]$`)

func checkErrorInvariants(t *testing.T, st *status.Status, view map[string]any) {
	t.Helper()
	infos := 0
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.ErrorInfo); ok {
			infos++
		}
	}
	if infos != 1 {
		t.Fatalf("the status carries %d google.rpc.ErrorInfo, want exactly 1 (status %q)", infos, st.Message())
	}
	info := view["error_info"].(map[string]any)
	if info["domain"] != gptgrpc.ErrorDomain {
		t.Errorf("ErrorInfo.domain = %v, want %q", info["domain"], gptgrpc.ErrorDomain)
	}
	reason, _ := info["reason"].(string)
	if v, ok := gptgrpcv1.ErrorReason_value[reason]; !ok || v == 0 {
		t.Errorf("ErrorInfo.reason %q is not a gptgrpc.v1.ErrorReason name", reason)
	}
	md, _ := info["metadata"].(map[string]any)
	if v, ok := md["http_status"]; ok {
		if s, _ := v.(string); !httpStatus.MatchString(s) {
			t.Errorf("ErrorInfo.metadata.http_status = %v, want a 3-digit HTTP status", v)
		}
	}
}

func toJSON(t *testing.T, m proto.Message) any {
	t.Helper()
	b, err := jsonOut.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func matchJSON(t *testing.T, what string, pattern json.RawMessage, actual any) {
	t.Helper()
	p, err := Decode(pattern)
	if err != nil {
		t.Fatalf("expect.%s: %v", what, err)
	}
	if err := Match(what, p, actual); err != nil {
		t.Errorf("%v\nactual %s: %s", err, what, show(actual))
	}
}

// expandVars substitutes ${NAME}: a variable saved by an earlier case, else an environment variable.
func expandVars(t *testing.T, s string, saved map[string]string) string {
	t.Helper()
	return envRef.ReplaceAllStringFunc(s, func(ref string) string {
		name := envRef.FindStringSubmatch(ref)[1]
		if v, ok := saved[name]; ok {
			return v
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			t.Fatalf("metadata refers to ${%s}, which is neither saved by an earlier case nor set", name)
		}
		return v
	})
}

func standinPost(t *testing.T, url string, body []byte) {
	t.Helper()
	resp, err := httpc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("stand-in %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stand-in %s: HTTP %d %s", url, resp.StatusCode, b)
	}
}

func standinGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := httpc.Get(url)
	if err != nil {
		t.Fatalf("stand-in %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stand-in %s: HTTP %d %s %v", url, resp.StatusCode, b, err)
	}
	return b
}

// gRPC code names as in the proto (google.rpc.Code), e.g. "INVALID_ARGUMENT".
var codeByName = map[string]codes.Code{}

func init() {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		codeByName[codeName(c)] = c
	}
}

func codeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
		codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if n, ok := names[c]; ok {
		return n
	}
	return c.String()
}
