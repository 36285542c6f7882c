package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionRequest;
import gptgrpc.v1.Gateway.CountTokensRequest;
import gptgrpc.v1.Gateway.StreamChatCompletionRequest;

/** The requests of the short forms (system + user message, model + text), shared by both clients. */
final class Requests {
  private Requests() {}

  static ChatCompletionRequest chat(String system, String user) {
    ChatCompletionRequest.Builder b = ChatCompletionRequest.newBuilder().setUserMessage(required(user));
    if (system != null && !system.isEmpty()) {
      b.setSystemMessage(system);
    }
    return b.build();
  }

  static StreamChatCompletionRequest streamChat(String system, String user) {
    StreamChatCompletionRequest.Builder b = StreamChatCompletionRequest.newBuilder().setUserMessage(required(user));
    if (system != null && !system.isEmpty()) {
      b.setSystemMessage(system);
    }
    return b.build();
  }

  static CountTokensRequest countTokens(String model, String text) {
    CountTokensRequest.Builder b = CountTokensRequest.newBuilder().setText(text == null ? "" : text);
    if (model != null) {
      b.setModel(model);
    }
    return b.build();
  }

  private static String required(String user) {
    if (user == null) {
      throw new IllegalArgumentException("gpt-grpc: the user message is null");
    }
    return user;
  }
}
