package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionSummary;
import gptgrpc.v1.Gateway.StreamChatCompletionResponse;
import java.util.Iterator;
import java.util.function.Supplier;

/**
 * A StreamChatCompletion call read as an {@link java.util.Iterator} of deltas; the summary is there once the
 * iteration ends.
 *
 * <pre>{@code
 * try (ChatStream stream = client.streamChatCompletion(request)) {
 *   stream.forEachRemaining(delta -> System.out.print(delta.getContent()));
 *   System.out.println(stream.summary().getUsage().getTotalTokens());
 * }
 * }</pre>
 *
 * <p>{@link #hasNext()} and {@link #next()} block for the next delta and throw {@link GatewayException} when the
 * call fails. {@link #close()} cancels a call that was not read to its end. Not thread-safe.
 */
public final class ChatStream extends DeltaStream<StreamChatCompletionResponse, ChatCompletionSummary> {
  private ChatStream(Started<StreamChatCompletionResponse> started) {
    super(started.context(), started.responses(), StreamAssembler.chat());
  }

  /** Starts the call made by {@code start} in a context of its own, so that close() can cancel it. */
  static ChatStream start(Supplier<Iterator<StreamChatCompletionResponse>> start) {
    return new ChatStream(DeltaStream.startCall(start));
  }

  /** Reads the rest of the stream and returns the whole answer. */
  public StreamResult result() {
    ChatCompletionSummary summary = readToEnd();
    return new StreamResult(assembler.content(), assembler.refusal(), summary);
  }
}
