package io.gptgrpc.client.contract;

import static org.junit.jupiter.api.Assertions.fail;

/** The variables tests/contract/harness.py sets; a runner started without them fails (it does not skip). */
final class HarnessEnv {
  static final String HOW = "run it through tests/contract/harness.py (make contract-test), which starts the"
      + " stand-in and the gateway";

  private HarnessEnv() {}

  /** The value of the variable; fails the test when it is not set. */
  static String require(String name) {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      fail(name + " is not set: " + HOW);
    }
    return v;
  }
}
