package gptgrpc

import (
	"errors"
	"io"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the gateway's errors.
const ErrorDomain = "gpt-grpc"

// ErrorDetails decodes the google.rpc details of a gateway error: the
// ErrorInfo reason (an ErrorReason name such as "UPSTREAM_RATE_LIMITED") and
// the ErrorInfo, RetryInfo and BadRequest details, each nil when absent.
// For an error that is not a gRPC status, or has no ErrorInfo, reason is "".
// When several details of a kind are attached, the first one is returned.
func ErrorDetails(err error) (reason string, info *errdetails.ErrorInfo, retry *errdetails.RetryInfo, bad *errdetails.BadRequest) {
	if err == nil {
		return "", nil, nil, nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return "", nil, nil, nil
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if info == nil {
				info = d
			}
		case *errdetails.RetryInfo:
			if retry == nil {
				retry = d
			}
		case *errdetails.BadRequest:
			if bad == nil {
				bad = d
			}
		}
	}
	if info != nil {
		reason = info.GetReason()
	}
	return reason, info, retry, bad
}

// QuotaFailure returns the google.rpc.QuotaFailure of a gateway error (sent
// with CLIENT_BUDGET_EXCEEDED), or nil.
func QuotaFailure(err error) *errdetails.QuotaFailure {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if q, ok := d.(*errdetails.QuotaFailure); ok {
			return q
		}
	}
	return nil
}

// Reason returns the typed ErrorReason of a gateway error, or
// ERROR_REASON_UNSPECIFIED when err carries no gpt-grpc ErrorInfo or a
// reason unknown to this client version.
func Reason(err error) gptgrpcv1.ErrorReason {
	_, info, _, _ := ErrorDetails(err)
	if info == nil || info.GetDomain() != ErrorDomain {
		return gptgrpcv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return gptgrpcv1.ErrorReason(gptgrpcv1.ErrorReason_value[info.GetReason()])
}

// StreamResult is a whole streamed answer.
type StreamResult struct {
	// Content is the concatenation of every delta's content.
	Content string
	// Refusal is the concatenation of every delta's refusal.
	Refusal string
	// Summary is the stream's final message.
	Summary *gptgrpcv1.ChatCompletionSummary
}

// errNoSummary reports a stream that ended without its summary.
var errNoSummary = errors.New("gptgrpc: stream ended without a summary")

// CollectStream reads a StreamChatCompletion stream to its end, calling
// onDelta (if not nil) for each delta as it arrives, and returns the whole
// answer. The error is the stream's gRPC error, if any.
func CollectStream(stream interface {
	Recv() (*gptgrpcv1.StreamChatCompletionResponse, error)
}, onDelta func(*gptgrpcv1.ChatCompletionDelta)) (*StreamResult, error) {
	content, refusal, summary, err := collect(stream.Recv, onDelta,
		func(m *gptgrpcv1.StreamChatCompletionResponse) (*gptgrpcv1.ChatCompletionDelta, *gptgrpcv1.ChatCompletionSummary) {
			return m.GetDelta(), m.GetSummary()
		})
	if err != nil {
		return nil, err
	}
	return &StreamResult{Content: content, Refusal: refusal, Summary: summary}, nil
}

// collect reads a stream of deltas then one summary (StreamChatCompletion,
// StreamConverse) to its end; event says what a message carries.
func collect[M any, S comparable](recv func() (M, error), onDelta func(*gptgrpcv1.ChatCompletionDelta),
	event func(M) (*gptgrpcv1.ChatCompletionDelta, S)) (string, string, S, error) {
	var none, summary S
	var content, refusal []byte
	for {
		msg, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", "", none, err
		}
		delta, s := event(msg)
		if delta != nil {
			content = append(content, delta.GetContent()...)
			refusal = append(refusal, delta.GetRefusal()...)
			if onDelta != nil {
				onDelta(delta)
			}
		} else if s != none {
			summary = s
		}
	}
	if summary == none {
		return "", "", none, errNoSummary
	}
	return string(content), string(refusal), summary, nil
}
