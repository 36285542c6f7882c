package gptgrpc_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// conversations is a fake gateway that keeps conversations in memory and echoes.
type conversations struct {
	gptgrpcv1.UnimplementedGPTServiceServer
	mu      sync.Mutex
	next    int
	history map[string][]string
}

func notFound() error {
	st, _ := status.New(codes.NotFound, "no such conversation").WithDetails(
		&errdetails.ErrorInfo{Reason: "CONVERSATION_NOT_FOUND", Domain: gptgrpc.ErrorDomain})
	return st.Err()
}

func (f *conversations) CreateConversation(_ context.Context, _ *gptgrpcv1.CreateConversationRequest) (*gptgrpcv1.CreateConversationResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	id := fmt.Sprintf("conv_%032d", f.next)
	f.history[id] = nil
	return &gptgrpcv1.CreateConversationResponse{Conversation: &gptgrpcv1.Conversation{Id: id}}, nil
}

func (f *conversations) Converse(_ context.Context, req *gptgrpcv1.ConverseRequest) (*gptgrpcv1.ConverseResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.history[req.GetConversationId()]
	if !ok {
		return nil, notFound()
	}
	f.history[req.GetConversationId()] = append(h, req.GetUserMessage())
	return &gptgrpcv1.ConverseResponse{Content: fmt.Sprintf("Echo: %s (turn %d)", req.GetUserMessage(), len(h)+1)}, nil
}

func (f *conversations) DeleteConversation(_ context.Context, req *gptgrpcv1.DeleteConversationRequest) (*gptgrpcv1.DeleteConversationResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.history[req.GetConversationId()]; !ok {
		return nil, notFound()
	}
	delete(f.history, req.GetConversationId())
	return &gptgrpcv1.DeleteConversationResponse{}, nil
}

func (f *conversations) StreamConverse(req *gptgrpcv1.StreamConverseRequest, s grpc.ServerStreamingServer[gptgrpcv1.StreamConverseResponse]) error {
	for _, part := range []string{"Echo: ", req.GetUserMessage()} {
		if err := s.Send(&gptgrpcv1.StreamConverseResponse{Event: &gptgrpcv1.StreamConverseResponse_Delta{
			Delta: &gptgrpcv1.ChatCompletionDelta{Content: part}}}); err != nil {
			return err
		}
	}
	return s.Send(&gptgrpcv1.StreamConverseResponse{Event: &gptgrpcv1.StreamConverseResponse_Summary{
		Summary: &gptgrpcv1.ConverseSummary{MessageCount: 2, TrimmedMessages: 0, ContextTokens: 12}}})
}

func serveConversations(t *testing.T) (*conversations, *gptgrpc.Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &conversations{history: map[string][]string{}}
	srv := grpc.NewServer()
	gptgrpcv1.RegisterGPTServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := gptgrpc.Dial(lis.Addr().String(), gptgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

func TestContextAssistantKeepsOneConversation(t *testing.T) {
	f, c := serveConversations(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := gptgrpc.NewContextAssistant(c, &gptgrpcv1.CreateConversationRequest{SystemMessage: "Be brief."})
	if id := a.ConversationID(); id != "" {
		t.Fatalf("id before the first Ask: %q", id)
	}
	for i, want := range []string{"Echo: one (turn 1)", "Echo: two (turn 2)"} {
		got, err := a.Ask(ctx, []string{"one", "two"}[i])
		if err != nil || got != want {
			t.Fatalf("Ask %d = %q, %v; want %q", i, got, err, want)
		}
	}
	first := a.ConversationID()
	// Deleted behind its back (expired, say): a new conversation starts.
	if _, err := c.DeleteConversation(ctx, &gptgrpcv1.DeleteConversationRequest{ConversationId: first}); err != nil {
		t.Fatal(err)
	}
	got, err := a.Ask(ctx, "three")
	if err != nil || got != "Echo: three (turn 1)" || a.ConversationID() == first {
		t.Fatalf("after the deletion: %q, %v, id %s", got, err, a.ConversationID())
	}
	if err := a.Reset(ctx); err != nil || a.ConversationID() != "" {
		t.Fatalf("Reset: %v, id %q", err, a.ConversationID())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.history) != 0 {
		t.Fatalf("conversations left: %v", f.history)
	}
}

func TestCollectConverseStream(t *testing.T) {
	_, c := serveConversations(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.StreamConverse(ctx, &gptgrpcv1.StreamConverseRequest{ConversationId: "conv_x", UserMessage: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	var deltas int
	res, err := gptgrpc.CollectConverseStream(stream, func(*gptgrpcv1.ChatCompletionDelta) { deltas++ })
	if err != nil {
		t.Fatal(err)
	}
	if res.Content != "Echo: hi" || deltas != 2 || res.Summary.GetMessageCount() != 2 {
		t.Fatalf("got %+v after %d deltas", res, deltas)
	}
}
