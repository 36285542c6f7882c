package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionDelta;
import io.grpc.Context;
import io.grpc.StatusRuntimeException;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.function.Supplier;

/**
 * A server stream of deltas then one summary, read as an {@link Iterator} of deltas ({@link ChatStream},
 * {@link ConverseStream}). {@link #hasNext()} and {@link #next()} block for the next delta and throw
 * {@link GatewayException} when the call fails. {@link #close()} cancels a call that was not read to its end.
 * Not thread-safe.
 *
 * @param <M> the stream's message type
 * @param <S> its summary type
 */
abstract class DeltaStream<M, S> implements Iterator<ChatCompletionDelta>, AutoCloseable {
  private final Context.CancellableContext context;
  private final Iterator<M> responses;
  final StreamAssembler<M, S> assembler;
  private ChatCompletionDelta next;
  private boolean ended;

  DeltaStream(Context.CancellableContext context, Iterator<M> responses, StreamAssembler<M, S> assembler) {
    this.context = context;
    this.responses = responses;
    this.assembler = assembler;
  }

  /** A started call: its own cancellable context, and its responses. */
  record Started<M>(Context.CancellableContext context, Iterator<M> responses) {}

  /** Starts the call made by {@code start} in a context of its own, so that close() can cancel it. */
  static <M> Started<M> startCall(Supplier<Iterator<M>> start) {
    Context.CancellableContext context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      return new Started<>(context, start.get());
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
      M message;
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
  public S summary() {
    if (!ended || assembler.summary() == null) {
      throw new IllegalStateException("gpt-grpc: the summary comes at the end of the stream: read it to its end first");
    }
    return assembler.summary();
  }

  /** The content of the deltas read so far. */
  public String content() {
    return assembler.content();
  }

  /** Reads the rest of the stream; the summary. */
  S readToEnd() {
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
