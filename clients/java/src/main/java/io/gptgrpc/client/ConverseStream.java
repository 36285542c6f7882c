package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ConverseSummary;
import gptgrpc.v1.Gateway.StreamConverseResponse;
import java.util.Iterator;
import java.util.function.Supplier;

/**
 * A StreamConverse call (one turn of a conversation the gateway keeps) read as an {@link java.util.Iterator} of
 * deltas, like a {@link ChatStream}; the {@link ConverseSummary} is there once the iteration ends. The gateway
 * keeps the turn only when the stream ends with it: closing it early appends nothing.
 */
public final class ConverseStream extends DeltaStream<StreamConverseResponse, ConverseSummary> {
  private ConverseStream(Started<StreamConverseResponse> started) {
    super(started.context(), started.responses(), StreamAssembler.converse());
  }

  static ConverseStream start(Supplier<Iterator<StreamConverseResponse>> start) {
    return new ConverseStream(DeltaStream.startCall(start));
  }

  /** Reads the rest of the stream and returns the whole turn. */
  public ConverseResult result() {
    ConverseSummary summary = readToEnd();
    return new ConverseResult(assembler.content(), assembler.refusal(), summary);
  }
}
