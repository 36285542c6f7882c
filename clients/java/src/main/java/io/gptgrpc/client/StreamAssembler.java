package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionDelta;
import gptgrpc.v1.Gateway.ChatCompletionSummary;
import gptgrpc.v1.Gateway.StreamChatCompletionResponse;

/**
 * The rules of a StreamChatCompletion stream, shared by the blocking and the async client: deltas, then exactly
 * one summary, last. Accumulates the answer; a stream that breaks the rules is an {@link IllegalStateException}.
 */
final class StreamAssembler {
  private final StringBuilder content = new StringBuilder();
  private final StringBuilder refusal = new StringBuilder();
  private ChatCompletionSummary summary;

  /** The delta this message carries (accumulated), or null for the summary or an event this version does not know. */
  ChatCompletionDelta accept(StreamChatCompletionResponse message) {
    switch (message.getEventCase()) {
      case DELTA -> {
        if (summary != null) {
          throw new IllegalStateException("gpt-grpc: the stream sent a delta after its summary");
        }
        ChatCompletionDelta delta = message.getDelta();
        content.append(delta.getContent());
        refusal.append(delta.getRefusal());
        return delta;
      }
      case SUMMARY -> {
        if (summary != null) {
          throw new IllegalStateException("gpt-grpc: the stream sent two summaries");
        }
        summary = message.getSummary();
        return null;
      }
      default -> {
        return null; // an event added to the proto after this client was built: skipped
      }
    }
  }

  /** The summary, or null before it arrived. */
  ChatCompletionSummary summary() {
    return summary;
  }

  String content() {
    return content.toString();
  }

  /** The whole answer, once the stream ended. */
  StreamResult finish() {
    if (summary == null) {
      throw new IllegalStateException("gpt-grpc: the stream ended without a summary");
    }
    return new StreamResult(content.toString(), refusal.toString(), summary);
  }
}
