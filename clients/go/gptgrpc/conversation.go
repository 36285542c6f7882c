package gptgrpc

import (
	"context"
	"sync"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// ConverseResult is a whole streamed turn of a conversation.
type ConverseResult struct {
	// Content is the concatenation of every delta's content.
	Content string
	// Refusal is the concatenation of every delta's refusal.
	Refusal string
	// Summary is the stream's final message: usage, cost, the turn's
	// context tokens and trimmed messages, the conversation's message count.
	Summary *gptgrpcv1.ConverseSummary
}

// CollectConverseStream reads a StreamConverse stream to its end, calling
// onDelta (if not nil) for each delta as it arrives, and returns the whole
// turn. The error is the stream's gRPC error, if any; a turn whose stream
// fails (or is cancelled) is not kept by the gateway.
func CollectConverseStream(stream interface {
	Recv() (*gptgrpcv1.StreamConverseResponse, error)
}, onDelta func(*gptgrpcv1.ChatCompletionDelta)) (*ConverseResult, error) {
	content, refusal, summary, err := collect(stream.Recv, onDelta,
		func(m *gptgrpcv1.StreamConverseResponse) (*gptgrpcv1.ChatCompletionDelta, *gptgrpcv1.ConverseSummary) {
			return m.GetDelta(), m.GetSummary()
		})
	if err != nil {
		return nil, err
	}
	return &ConverseResult{Content: content, Refusal: refusal, Summary: summary}, nil
}

// ContextAssistant is the original module's context_assistant: answers in
// one conversation that the gateway keeps, so each prompt is answered with
// the earlier ones in context (the oldest left out, or summarized, once they
// no longer fit the model's context window). The conversation is created on
// the first Ask with the given CreateConversationRequest; if it later
// expires or is deleted, a new one starts. Safe for concurrent use: turns
// run one at a time.
type ContextAssistant struct {
	client *Client
	create *gptgrpcv1.CreateConversationRequest
	mu     sync.Mutex
	id     string
}

// NewContextAssistant returns an assistant over c; create (nil: the
// gateway's defaults) describes the conversation it will start.
func NewContextAssistant(c *Client, create *gptgrpcv1.CreateConversationRequest) *ContextAssistant {
	if create == nil {
		create = &gptgrpcv1.CreateConversationRequest{}
	}
	return &ContextAssistant{client: c, create: create}
}

// Ask answers prompt in the assistant's conversation.
func (a *ContextAssistant) Ask(ctx context.Context, prompt string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.id != "" {
		res, err := a.client.Converse(ctx, &gptgrpcv1.ConverseRequest{ConversationId: a.id, UserMessage: prompt})
		if err == nil {
			return res.GetContent(), nil
		}
		if Reason(err) != gptgrpcv1.ErrorReason_CONVERSATION_NOT_FOUND {
			return "", err
		}
	}
	made, err := a.client.CreateConversation(ctx, a.create)
	if err != nil {
		return "", err
	}
	a.id = made.GetConversation().GetId()
	res, err := a.client.Converse(ctx, &gptgrpcv1.ConverseRequest{ConversationId: a.id, UserMessage: prompt})
	if err != nil {
		return "", err
	}
	return res.GetContent(), nil
}

// ConversationID is the id of the assistant's conversation ("" before the first Ask).
func (a *ContextAssistant) ConversationID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// Reset deletes the assistant's conversation; the next Ask starts a new one.
func (a *ContextAssistant) Reset(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := a.id
	a.id = ""
	if id == "" {
		return nil
	}
	_, err := a.client.DeleteConversation(ctx, &gptgrpcv1.DeleteConversationRequest{ConversationId: id})
	if err != nil && Reason(err) != gptgrpcv1.ErrorReason_CONVERSATION_NOT_FOUND {
		return err
	}
	return nil
}
