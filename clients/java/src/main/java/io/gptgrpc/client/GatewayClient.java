package io.gptgrpc.client;

import gptgrpc.v1.GPTServiceGrpc;
import gptgrpc.v1.GPTServiceGrpc.GPTServiceBlockingStub;
import gptgrpc.v1.Gateway.ChatCompletionRequest;
import gptgrpc.v1.Gateway.ChatCompletionResponse;
import gptgrpc.v1.Gateway.ConfigureRequest;
import gptgrpc.v1.Gateway.ConfigureResponse;
import gptgrpc.v1.Gateway.ConverseRequest;
import gptgrpc.v1.Gateway.ConverseResponse;
import gptgrpc.v1.Gateway.CountTokensRequest;
import gptgrpc.v1.Gateway.CountTokensResponse;
import gptgrpc.v1.Gateway.CreateClientRequest;
import gptgrpc.v1.Gateway.CreateClientResponse;
import gptgrpc.v1.Gateway.CreateConversationRequest;
import gptgrpc.v1.Gateway.CreateConversationResponse;
import gptgrpc.v1.Gateway.DeleteConversationRequest;
import gptgrpc.v1.Gateway.DeleteConversationResponse;
import gptgrpc.v1.Gateway.GetConversationRequest;
import gptgrpc.v1.Gateway.GetConversationResponse;
import gptgrpc.v1.Gateway.GetConfigurationRequest;
import gptgrpc.v1.Gateway.GetConfigurationResponse;
import gptgrpc.v1.Gateway.GetUsageRequest;
import gptgrpc.v1.Gateway.GetUsageResponse;
import gptgrpc.v1.Gateway.ListClientsRequest;
import gptgrpc.v1.Gateway.ListClientsResponse;
import gptgrpc.v1.Gateway.ListConversationsRequest;
import gptgrpc.v1.Gateway.ListConversationsResponse;
import gptgrpc.v1.Gateway.ListModelsRequest;
import gptgrpc.v1.Gateway.ListModelsResponse;
import gptgrpc.v1.Gateway.ListUpstreamsRequest;
import gptgrpc.v1.Gateway.ListUpstreamsResponse;
import gptgrpc.v1.Gateway.RevokeClientRequest;
import gptgrpc.v1.Gateway.RevokeClientResponse;
import gptgrpc.v1.Gateway.StreamChatCompletionRequest;
import gptgrpc.v1.Gateway.StreamConverseRequest;
import gptgrpc.v1.Gateway.UpdateClientRequest;
import gptgrpc.v1.Gateway.UpdateClientResponse;
import io.grpc.CallCredentials;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.function.Supplier;

/**
 * Blocking client of {@code gptgrpc.v1.GPTService}. Every failure is a {@link GatewayException}.
 *
 * <pre>{@code
 * try (GatewayClient client = GatewayClient.builder("127.0.0.1:50051").plaintext().build()) {
 *   System.out.println(client.chatCompletion("Be brief.", "Why is the sky blue?"));
 * }
 * }</pre>
 *
 * <p>Thread-safe. {@link #withToken(String)}, {@link #withDeadline(Duration)} and {@link #async()} give views on the
 * same connection; closing any of them closes it.
 */
public final class GatewayClient implements AutoCloseable {
  private final GatewayChannel channel;
  private final CallCredentials credentials; // null: the channel's tokens
  private final Duration deadline; // null: the channel's default deadline
  private final GPTServiceBlockingStub stub;

  GatewayClient(GatewayChannel channel) {
    this(channel, null, null);
  }

  private GatewayClient(GatewayChannel channel, CallCredentials credentials, Duration deadline) {
    this.channel = channel;
    this.credentials = credentials;
    this.deadline = deadline;
    this.stub = Stubs.configure(GPTServiceGrpc.newBlockingStub(channel.channel()), credentials, deadline);
  }

  /** A builder for a client of the gateway at {@code target} ("host:port" or any grpc-java target). */
  public static GatewayChannelBuilder builder(String target) {
    return new GatewayChannelBuilder(target);
  }

  /** A client on an existing connection. */
  public static GatewayClient of(GatewayChannel channel) {
    return new GatewayClient(channel);
  }

  /** This client with these call credentials on its calls instead of the builder's tokens. */
  public GatewayClient withCallCredentials(CallCredentials credentials) {
    return new GatewayClient(channel, credentials, deadline);
  }

  /** This client with {@code token} (admin or client) on every call, instead of the builder's tokens. */
  public GatewayClient withToken(String token) {
    return withCallCredentials(GatewayTokens.bearer(token));
  }

  /** This client with a deadline {@code timeout} after the start of each call, instead of the default one. */
  public GatewayClient withDeadline(Duration timeout) {
    return new GatewayClient(channel, credentials, Stubs.checkedTimeout(timeout));
  }

  /** The async client on the same connection, with the same tokens and deadline. */
  public AsyncGatewayClient async() {
    return new AsyncGatewayClient(channel, credentials, deadline);
  }

  /** The generated blocking stub behind this client (it throws StatusRuntimeException: see GatewayException.from). */
  public GPTServiceBlockingStub stub() {
    return stub;
  }

  /** The connection. */
  public GatewayChannel channel() {
    return channel;
  }

  /** The answer to {@code user} (after {@code system}, when not null or empty), with the default model. */
  public String chatCompletion(String system, String user) {
    return chatCompletion(Requests.chat(system, user)).getContent();
  }

  /** ChatCompletion: one answer. */
  public ChatCompletionResponse chatCompletion(ChatCompletionRequest request) {
    return call(() -> stub.chatCompletion(request));
  }

  /** StreamChatCompletion of {@code user} (after {@code system}, when not null or empty), with the default model. */
  public ChatStream streamChatCompletion(String system, String user) {
    return streamChatCompletion(Requests.streamChat(system, user));
  }

  /** StreamChatCompletion: the deltas as they come, then the summary. Close the stream if you stop early. */
  public ChatStream streamChatCompletion(StreamChatCompletionRequest request) {
    return ChatStream.start(() -> stub.streamChatCompletion(request));
  }

  /** The number of tokens of {@code text} for {@code model} (empty: the default model). */
  public long countTokens(String model, String text) {
    return countTokens(Requests.countTokens(model, text)).getTokenCount();
  }

  /** CountTokens. */
  public CountTokensResponse countTokens(CountTokensRequest request) {
    return call(() -> stub.countTokens(request));
  }

  /** Configure (admin). */
  public ConfigureResponse configure(ConfigureRequest request) {
    return call(() -> stub.configure(request));
  }

  /** GetConfiguration. */
  public GetConfigurationResponse getConfiguration(GetConfigurationRequest request) {
    return call(() -> stub.getConfiguration(request));
  }

  /** ListModels. */
  public ListModelsResponse listModels(ListModelsRequest request) {
    return call(() -> stub.listModels(request));
  }

  /** GetUsage: the caller's own usage with a client token, any client's with the admin token. */
  public GetUsageResponse getUsage(GetUsageRequest request) {
    return call(() -> stub.getUsage(request));
  }

  /** ListUpstreams: each upstream's breaker state, calls in flight and recent error rate. */
  public ListUpstreamsResponse listUpstreams(ListUpstreamsRequest request) {
    return call(() -> stub.listUpstreams(request));
  }

  /** CreateClient (admin): the response holds the client's token, shown once. */
  public CreateClientResponse createClient(CreateClientRequest request) {
    return call(() -> stub.createClient(request));
  }

  /** ListClients (admin). */
  public ListClientsResponse listClients(ListClientsRequest request) {
    return call(() -> stub.listClients(request));
  }

  /** UpdateClient (admin). */
  public UpdateClientResponse updateClient(UpdateClientRequest request) {
    return call(() -> stub.updateClient(request));
  }

  /** RevokeClient (admin). */
  public RevokeClientResponse revokeClient(RevokeClientRequest request) {
    return call(() -> stub.revokeClient(request));
  }

  /**
   * CreateConversation: a conversation the gateway keeps (the context assistant); its {@code id} names it in the
   * turns. It belongs to this client's token.
   */
  public CreateConversationResponse createConversation(CreateConversationRequest request) {
    return call(() -> stub.createConversation(request));
  }

  /** Converse: one turn of a conversation, with the turn's context tokens and trimmed messages. */
  public ConverseResponse converse(ConverseRequest request) {
    return call(() -> stub.converse(request));
  }

  /** The answer to {@code user} in conversation {@code conversationId}. */
  public String converse(String conversationId, String user) {
    return converse(ConverseRequest.newBuilder().setConversationId(conversationId).setUserMessage(user).build())
        .getContent();
  }

  /** StreamConverse: one turn, streamed. Closing the stream early appends nothing to the conversation. */
  public ConverseStream streamConverse(StreamConverseRequest request) {
    return ConverseStream.start(() -> stub.streamConverse(request));
  }

  /** GetConversation: a conversation with its messages. */
  public GetConversationResponse getConversation(GetConversationRequest request) {
    return call(() -> stub.getConversation(request));
  }

  /** ListConversations: this token's conversations, newest first (every client's with the admin token). */
  public ListConversationsResponse listConversations(ListConversationsRequest request) {
    return call(() -> stub.listConversations(request));
  }

  /** DeleteConversation (the admin token may delete any). */
  public DeleteConversationResponse deleteConversation(DeleteConversationRequest request) {
    return call(() -> stub.deleteConversation(request));
  }

  /** Closes the connection (shared with the views of this client). */
  @Override
  public void close() {
    channel.close();
  }

  private static <T> T call(Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException e) {
      throw GatewayException.from(e);
    }
  }
}
