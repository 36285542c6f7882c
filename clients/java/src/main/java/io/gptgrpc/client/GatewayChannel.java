package io.gptgrpc.client;

import io.grpc.Channel;
import io.grpc.ClientInterceptors;
import io.grpc.ManagedChannel;
import java.time.Duration;
import java.util.concurrent.TimeUnit;

/**
 * A connection to the gateway, made by {@link GatewayChannelBuilder}: the {@link ManagedChannel} and the
 * {@link Channel} to make stubs on, which applies the builder's tokens and default deadline to every call.
 */
public final class GatewayChannel implements AutoCloseable {
  private static final Duration CLOSE_GRACE = Duration.ofSeconds(5);

  private final ManagedChannel managed;
  private final Channel channel;

  GatewayChannel(ManagedChannel managed, CallDefaults defaults) {
    this.managed = managed;
    this.channel = ClientInterceptors.intercept(managed, defaults);
  }

  /** The channel for stubs ({@code GPTServiceGrpc.newBlockingStub(channel.channel())}, health checks...). */
  public Channel channel() {
    return channel;
  }

  /** The underlying managed channel (state, shutdown); its calls do not get the tokens or the deadline. */
  public ManagedChannel managedChannel() {
    return managed;
  }

  /** Shuts the connection down: waits up to 5 s for calls in flight, then cancels them. */
  @Override
  public void close() {
    managed.shutdown();
    try {
      if (!managed.awaitTermination(CLOSE_GRACE.toMillis(), TimeUnit.MILLISECONDS)) {
        managed.shutdownNow();
      }
    } catch (InterruptedException e) {
      managed.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
