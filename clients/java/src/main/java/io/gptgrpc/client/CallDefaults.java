package io.gptgrpc.client;

import io.grpc.CallCredentials;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.MethodDescriptor;
import java.time.Duration;
import java.util.concurrent.TimeUnit;

/**
 * Applies the channel's defaults to every call made on it, generated stubs included: the tokens, unless the call
 * has call credentials of its own, and the default deadline, unless the call has a deadline.
 */
final class CallDefaults implements ClientInterceptor {
  private final CallCredentials credentials; // null: none
  private final Duration deadline; // null: none

  CallDefaults(CallCredentials credentials, Duration deadline) {
    this.credentials = credentials;
    this.deadline = deadline;
  }

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions callOptions, Channel next) {
    CallOptions options = callOptions;
    if (credentials != null && options.getCredentials() == null) {
      options = options.withCallCredentials(credentials);
    }
    if (deadline != null && options.getDeadline() == null) {
      options = options.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
    }
    return next.newCall(method, options);
  }
}
