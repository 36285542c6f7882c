package io.gptgrpc.client;

import gptgrpc.v1.GPTServiceGrpc;
import gptgrpc.v1.GPTServiceGrpc.GPTServiceStub;
import gptgrpc.v1.Gateway.ChatCompletionDelta;
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
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.function.BiConsumer;
import java.util.function.Consumer;
import java.util.function.Function;

/**
 * Async client of {@code gptgrpc.v1.GPTService} over the generated async stub: every call returns a
 * {@link CompletableFuture}, which fails with a {@link GatewayException} when the call fails; cancelling the future
 * cancels the call. Made by {@link GatewayClient#async()}; it shares that client's connection, tokens and deadline.
 */
public final class AsyncGatewayClient {
  private final GPTServiceStub stub;

  AsyncGatewayClient(GatewayChannel channel, CallCredentials credentials, Duration deadline) {
    this.stub = Stubs.configure(GPTServiceGrpc.newStub(channel.channel()), credentials, deadline);
  }

  /** The generated async stub behind this client. */
  public GPTServiceStub stub() {
    return stub;
  }

  /** The answer to {@code user} (after {@code system}, when not null or empty), with the default model. */
  public CompletableFuture<String> chatCompletion(String system, String user) {
    return chatCompletion(Requests.chat(system, user)).thenApply(ChatCompletionResponse::getContent);
  }

  /** ChatCompletion. */
  public CompletableFuture<ChatCompletionResponse> chatCompletion(ChatCompletionRequest request) {
    return unary(stub::chatCompletion, request);
  }

  /**
   * StreamChatCompletion: {@code onDelta} gets each delta as it arrives (in order, on a gRPC thread: do not block
   * it); the future completes with the whole answer. An exception thrown by {@code onDelta} cancels the call and
   * fails the future with it.
   */
  public CompletableFuture<StreamResult> streamChatCompletion(
      StreamChatCompletionRequest request, Consumer<ChatCompletionDelta> onDelta) {
    CompletableFuture<StreamResult> result = new CompletableFuture<>();
    stub.streamChatCompletion(request, new StreamCollector<>(result, onDelta, StreamAssembler.chat(),
        a -> new StreamResult(a.content(), a.refusal(), a.finish())));
    return result;
  }

  /** CountTokens. */
  public CompletableFuture<CountTokensResponse> countTokens(CountTokensRequest request) {
    return unary(stub::countTokens, request);
  }

  /** Configure (admin). */
  public CompletableFuture<ConfigureResponse> configure(ConfigureRequest request) {
    return unary(stub::configure, request);
  }

  /** GetConfiguration. */
  public CompletableFuture<GetConfigurationResponse> getConfiguration(GetConfigurationRequest request) {
    return unary(stub::getConfiguration, request);
  }

  /** ListModels. */
  public CompletableFuture<ListModelsResponse> listModels(ListModelsRequest request) {
    return unary(stub::listModels, request);
  }

  /** GetUsage. */
  public CompletableFuture<GetUsageResponse> getUsage(GetUsageRequest request) {
    return unary(stub::getUsage, request);
  }

  /** ListUpstreams: each upstream's breaker state, calls in flight and recent error rate. */
  public CompletableFuture<ListUpstreamsResponse> listUpstreams(ListUpstreamsRequest request) {
    return unary(stub::listUpstreams, request);
  }

  /** CreateClient (admin). */
  public CompletableFuture<CreateClientResponse> createClient(CreateClientRequest request) {
    return unary(stub::createClient, request);
  }

  /** ListClients (admin). */
  public CompletableFuture<ListClientsResponse> listClients(ListClientsRequest request) {
    return unary(stub::listClients, request);
  }

  /** UpdateClient (admin). */
  public CompletableFuture<UpdateClientResponse> updateClient(UpdateClientRequest request) {
    return unary(stub::updateClient, request);
  }

  /** RevokeClient (admin). */
  public CompletableFuture<RevokeClientResponse> revokeClient(RevokeClientRequest request) {
    return unary(stub::revokeClient, request);
  }

  /** CreateConversation: a conversation the gateway keeps. */
  public CompletableFuture<CreateConversationResponse> createConversation(CreateConversationRequest request) {
    return unary(stub::createConversation, request);
  }

  /** Converse: one turn of a conversation. */
  public CompletableFuture<ConverseResponse> converse(ConverseRequest request) {
    return unary(stub::converse, request);
  }

  /**
   * StreamConverse: one turn, streamed; {@code onDelta} gets each delta as for
   * {@link #streamChatCompletion(StreamChatCompletionRequest, Consumer)}. The turn is kept only when the stream
   * completes: cancelling the future appends nothing.
   */
  public CompletableFuture<ConverseResult> streamConverse(
      StreamConverseRequest request, Consumer<ChatCompletionDelta> onDelta) {
    CompletableFuture<ConverseResult> result = new CompletableFuture<>();
    stub.streamConverse(request, new StreamCollector<>(result, onDelta, StreamAssembler.converse(),
        a -> new ConverseResult(a.content(), a.refusal(), a.finish())));
    return result;
  }

  /** GetConversation. */
  public CompletableFuture<GetConversationResponse> getConversation(GetConversationRequest request) {
    return unary(stub::getConversation, request);
  }

  /** ListConversations. */
  public CompletableFuture<ListConversationsResponse> listConversations(ListConversationsRequest request) {
    return unary(stub::listConversations, request);
  }

  /** DeleteConversation. */
  public CompletableFuture<DeleteConversationResponse> deleteConversation(DeleteConversationRequest request) {
    return unary(stub::deleteConversation, request);
  }

  private static <Q, R> CompletableFuture<R> unary(BiConsumer<Q, StreamObserver<R>> rpc, Q request) {
    CompletableFuture<R> result = new CompletableFuture<>();
    rpc.accept(request, new UnaryCollector<>(result));
    return result;
  }

  /** Completes a future with the one response of a call; cancelling the future cancels the call. */
  private static final class UnaryCollector<Q, R> implements ClientResponseObserver<Q, R> {
    private final CompletableFuture<R> result;
    private R response;

    UnaryCollector(CompletableFuture<R> result) {
      this.result = result;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<Q> call) {
      cancelOnCancel(result, call);
    }

    @Override
    public void onNext(R value) {
      response = value;
    }

    @Override
    public void onError(Throwable t) {
      result.completeExceptionally(GatewayException.from(t));
    }

    @Override
    public void onCompleted() {
      result.complete(response);
    }
  }

  /** Feeds the deltas to the caller and completes the future with the whole answer. */
  private static final class StreamCollector<Q, M, S, R> implements ClientResponseObserver<Q, M> {
    private final CompletableFuture<R> result;
    private final Consumer<ChatCompletionDelta> onDelta;
    private final StreamAssembler<M, S> assembler;
    private final Function<StreamAssembler<M, S>, R> finish;
    private ClientCallStreamObserver<Q> call;

    StreamCollector(CompletableFuture<R> result, Consumer<ChatCompletionDelta> onDelta,
        StreamAssembler<M, S> assembler, Function<StreamAssembler<M, S>, R> finish) {
      this.result = result;
      this.onDelta = onDelta;
      this.assembler = assembler;
      this.finish = finish;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<Q> call) {
      this.call = call;
      cancelOnCancel(result, call);
    }

    @Override
    public void onNext(M message) {
      if (result.isDone()) {
        return; // failed by an earlier message: the call is being cancelled
      }
      try {
        ChatCompletionDelta delta = assembler.accept(message);
        if (delta != null && onDelta != null) {
          onDelta.accept(delta);
        }
      } catch (RuntimeException e) {
        result.completeExceptionally(e);
        call.cancel("gpt-grpc: the stream was abandoned", e);
      }
    }

    @Override
    public void onError(Throwable t) {
      result.completeExceptionally(GatewayException.from(t));
    }

    @Override
    public void onCompleted() {
      try {
        result.complete(finish.apply(assembler));
      } catch (IllegalStateException e) {
        result.completeExceptionally(e);
      }
    }
  }

  private static void cancelOnCancel(CompletableFuture<?> result, ClientCallStreamObserver<?> call) {
    result.whenComplete((value, error) -> {
      if (result.isCancelled()) {
        call.cancel("gpt-grpc: cancelled by the caller", null);
      }
    });
  }
}
