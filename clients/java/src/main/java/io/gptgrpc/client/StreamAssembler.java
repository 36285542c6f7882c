package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionDelta;
import gptgrpc.v1.Gateway.ChatCompletionSummary;
import gptgrpc.v1.Gateway.ConverseSummary;
import gptgrpc.v1.Gateway.StreamChatCompletionResponse;
import gptgrpc.v1.Gateway.StreamConverseResponse;
import java.util.function.Function;

/**
 * The rules of a streamed answer (StreamChatCompletion, StreamConverse), shared by the blocking and the async
 * client: deltas, then exactly one summary, last. Accumulates the answer; a stream that breaks the rules is an
 * {@link IllegalStateException}.
 *
 * @param <M> the stream's message type
 * @param <S> its summary type
 */
final class StreamAssembler<M, S> {
  /** What one message of a stream carries: a delta, a summary, or neither (an event this version does not know). */
  record Event<S>(ChatCompletionDelta delta, S summary) {}

  private final Function<M, Event<S>> read;
  private final StringBuilder content = new StringBuilder();
  private final StringBuilder refusal = new StringBuilder();
  private S summary;

  private StreamAssembler(Function<M, Event<S>> read) {
    this.read = read;
  }

  /** For StreamChatCompletion. */
  static StreamAssembler<StreamChatCompletionResponse, ChatCompletionSummary> chat() {
    return new StreamAssembler<>(m -> switch (m.getEventCase()) {
      case DELTA -> new Event<>(m.getDelta(), null);
      case SUMMARY -> new Event<>(null, m.getSummary());
      default -> new Event<>(null, null);
    });
  }

  /** For StreamConverse. */
  static StreamAssembler<StreamConverseResponse, ConverseSummary> converse() {
    return new StreamAssembler<>(m -> switch (m.getEventCase()) {
      case DELTA -> new Event<>(m.getDelta(), null);
      case SUMMARY -> new Event<>(null, m.getSummary());
      default -> new Event<>(null, null);
    });
  }

  /** The delta this message carries (accumulated), or null for the summary or an event this version does not know. */
  ChatCompletionDelta accept(M message) {
    Event<S> event = read.apply(message);
    if (event.delta() != null) {
      if (summary != null) {
        throw new IllegalStateException("gpt-grpc: the stream sent a delta after its summary");
      }
      content.append(event.delta().getContent());
      refusal.append(event.delta().getRefusal());
      return event.delta();
    }
    if (event.summary() != null) {
      if (summary != null) {
        throw new IllegalStateException("gpt-grpc: the stream sent two summaries");
      }
      summary = event.summary();
    }
    return null; // the summary, or an event added to the proto after this client was built: skipped
  }

  /** The summary, or null before it arrived. */
  S summary() {
    return summary;
  }

  String content() {
    return content.toString();
  }

  String refusal() {
    return refusal.toString();
  }

  /** The summary, once the stream ended; throws when it never came. */
  S finish() {
    if (summary == null) {
      throw new IllegalStateException("gpt-grpc: the stream ended without a summary");
    }
    return summary;
  }
}
