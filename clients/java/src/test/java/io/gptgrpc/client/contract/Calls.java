package io.gptgrpc.client.contract;

import com.google.protobuf.Message;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/** One call of any kind (unary or streaming) made by method descriptor: every response, the status, the trailers. */
final class Calls {
  /** How long past its deadline a call may take to close before the runner gives up on it. */
  private static final Duration CLOSE_MARGIN = Duration.ofSeconds(10);

  private Calls() {}

  /** What a call returned. */
  record Outcome(List<Message> messages, Status status, Metadata trailers) {}

  /** Sends {@code request} (one message, then half-close) with these headers and deadline; waits for the end. */
  static <Q, R> Outcome invoke(
      Channel channel, MethodDescriptor<Q, R> method, Message request, Metadata headers, Duration timeout) {
    ClientCall<Q, R> call = channel.newCall(method,
        CallOptions.DEFAULT.withDeadlineAfter(timeout.toMillis(), TimeUnit.MILLISECONDS));
    List<Message> messages = new ArrayList<>();
    CompletableFuture<Outcome> done = new CompletableFuture<>();
    call.start(new ClientCall.Listener<R>() {
      @Override
      public void onMessage(R message) {
        synchronized (messages) {
          messages.add((Message) message);
        }
        call.request(1);
      }

      @Override
      public void onClose(Status status, Metadata trailers) {
        synchronized (messages) {
          done.complete(new Outcome(List.copyOf(messages), status, trailers));
        }
      }
    }, headers);
    call.request(1);
    @SuppressWarnings("unchecked") // the request was parsed from the method's own request prototype
    Q typed = (Q) request;
    call.sendMessage(typed);
    call.halfClose();
    try {
      return done.get(timeout.plus(CLOSE_MARGIN).toMillis(), TimeUnit.MILLISECONDS);
    } catch (TimeoutException e) {
      call.cancel("contract runner: the call did not end", e);
      throw new AssertionError("the call did not end within " + timeout.plus(CLOSE_MARGIN), e);
    } catch (ExecutionException e) {
      throw new AssertionError(e.getCause());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      call.cancel("interrupted", e);
      throw new AssertionError("interrupted", e);
    }
  }
}
