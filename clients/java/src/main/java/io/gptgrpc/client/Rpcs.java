package io.gptgrpc.client;

import gptgrpc.v1.GPTServiceGrpc;
import io.grpc.MethodDescriptor;
import java.util.Set;

/**
 * Which RPCs of {@code gptgrpc.v1.GPTService} take the admin token and which a client token.
 *
 * <p>The admin token goes only on the admin RPCs, a client token on every other (data-plane) RPC, never both on
 * one call. A test ({@code RpcsTest}) fails when the proto gains an RPC that is in neither set: classify it here.
 */
public final class Rpcs {
  /** Full names of the RPCs that take the admin token. */
  public static final Set<String> ADMIN = Set.of(
      GPTServiceGrpc.getConfigureMethod().getFullMethodName(),
      GPTServiceGrpc.getCreateClientMethod().getFullMethodName(),
      GPTServiceGrpc.getListClientsMethod().getFullMethodName(),
      GPTServiceGrpc.getUpdateClientMethod().getFullMethodName(),
      GPTServiceGrpc.getRevokeClientMethod().getFullMethodName());

  /** Full names of the other known RPCs, which take a client token. */
  public static final Set<String> DATA_PLANE = Set.of(
      GPTServiceGrpc.getChatCompletionMethod().getFullMethodName(),
      GPTServiceGrpc.getStreamChatCompletionMethod().getFullMethodName(),
      GPTServiceGrpc.getCountTokensMethod().getFullMethodName(),
      GPTServiceGrpc.getGetConfigurationMethod().getFullMethodName(),
      GPTServiceGrpc.getListModelsMethod().getFullMethodName(),
      GPTServiceGrpc.getGetUsageMethod().getFullMethodName(),
      GPTServiceGrpc.getListUpstreamsMethod().getFullMethodName(),
      // Conversations: with the admin token (withToken), ListConversations and DeleteConversation reach every
      // client's.
      GPTServiceGrpc.getCreateConversationMethod().getFullMethodName(),
      GPTServiceGrpc.getConverseMethod().getFullMethodName(),
      GPTServiceGrpc.getStreamConverseMethod().getFullMethodName(),
      GPTServiceGrpc.getGetConversationMethod().getFullMethodName(),
      GPTServiceGrpc.getListConversationsMethod().getFullMethodName(),
      GPTServiceGrpc.getDeleteConversationMethod().getFullMethodName());

  private Rpcs() {}

  /** Whether {@code method} is an admin RPC of GPTService (takes the admin token, not a client token). */
  public static boolean isAdmin(MethodDescriptor<?, ?> method) {
    return isAdmin(method.getFullMethodName());
  }

  /** Whether the full method name ({@code "gptgrpc.v1.GPTService/Configure"}) is an admin RPC. */
  public static boolean isAdmin(String fullMethodName) {
    return ADMIN.contains(fullMethodName);
  }
}
