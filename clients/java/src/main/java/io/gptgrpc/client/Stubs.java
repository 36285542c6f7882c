package io.gptgrpc.client;

import io.grpc.CallCredentials;
import io.grpc.stub.AbstractStub;
import java.time.Duration;

/** The per-view settings of a client (call credentials, per-call deadline) applied to a generated stub. */
final class Stubs {
  private Stubs() {}

  static <S extends AbstractStub<S>> S configure(S stub, CallCredentials credentials, Duration deadline) {
    S s = stub;
    if (credentials != null) {
      s = s.withCallCredentials(credentials);
    }
    if (deadline != null) {
      // Not withDeadlineAfter: that fixes one instant for every later call of the stub. The interceptor
      // computes the deadline when each call starts; the channel's default then no longer applies.
      s = s.withInterceptors(new CallDefaults(null, deadline));
    }
    return s;
  }

  static Duration checkedTimeout(Duration timeout) {
    if (timeout == null || timeout.isNegative() || timeout.isZero()) {
      throw new IllegalArgumentException("gpt-grpc: the deadline must be positive");
    }
    return timeout;
  }
}
