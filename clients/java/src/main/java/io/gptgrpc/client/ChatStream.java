package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionDelta;
import gptgrpc.v1.Gateway.ChatCompletionSummary;
import gptgrpc.v1.Gateway.StreamChatCompletionResponse;
import io.grpc.Context;
import io.grpc.StatusRuntimeException;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.function.Supplier;

/**
 * A StreamChatCompletion call read as an {@link Iterator} of deltas; the summary is there once the iteration ends.
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
public final class ChatStream implements Iterator<ChatCompletionDelta>, AutoCloseable {
  private final Context.CancellableContext context;
  private final Iterator<StreamChatCompletionResponse> responses;
  private final StreamAssembler assembler = new StreamAssembler();
  private ChatCompletionDelta next;
  private boolean ended;

  private ChatStream(Context.CancellableContext context, Iterator<StreamChatCompletionResponse> responses) {
    this.context = context;
    this.responses = responses;
  }

  /** Starts the call made by {@code start} in a context of its own, so that close() can cancel it. */
  static ChatStream start(Supplier<Iterator<StreamChatCompletionResponse>> start) {
    Context.CancellableContext context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      return new ChatStream(context, start.get());
    } catch (StatusRuntimeException e) {
      context.cancel(e);
      throw GatewayException.from(e);
    } finally {
      context.detach(previous);
    }
  }

  @Override
  public boolean hasNext() {
    while (next == null && !ended) {
      StreamChatCompletionResponse message;
      try {
        if (!responses.hasNext()) {
          ended = true;
          assembler.finish(); // throws when the summary is missing
          break;
        }
        message = responses.next();
      } catch (StatusRuntimeException e) {
        ended = true;
        throw GatewayException.from(e);
      }
      try {
        next = assembler.accept(message);
      } catch (IllegalStateException e) {
        close();
        throw e;
      }
    }
    return next != null;
  }

  @Override
  public ChatCompletionDelta next() {
    if (!hasNext()) {
      throw new NoSuchElementException("gpt-grpc: the stream has no more deltas");
    }
    ChatCompletionDelta delta = next;
    next = null;
    return delta;
  }

  /** The summary: available once the iteration ended (hasNext() returned false). */
  public ChatCompletionSummary summary() {
    if (!ended || assembler.summary() == null) {
      throw new IllegalStateException("gpt-grpc: the summary comes at the end of the stream: read it to its end first");
    }
    return assembler.summary();
  }

  /** The content of the deltas read so far. */
  public String content() {
    return assembler.content();
  }

  /** Reads the rest of the stream and returns the whole answer. */
  public StreamResult result() {
    while (hasNext()) {
      next();
    }
    return assembler.finish();
  }

  /** Cancels the call if it has not ended; the context's listeners are released either way. */
  @Override
  public void close() {
    ended = true;
    next = null;
    context.cancel(null);
  }
}
