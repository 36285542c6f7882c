package io.gptgrpc.client;

import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannelBuilder;
import io.grpc.TlsChannelCredentials;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.time.Duration;

/**
 * Builds a connection to a gpt-grpc gateway: TLS (the default, against the system roots or a CA), mutual TLS,
 * plaintext, the admin and client tokens, and a default deadline.
 *
 * <pre>{@code
 * GatewayClient client = GatewayClient.builder("gateway.internal:50051")
 *     .caFile(Path.of("ca.pem"))                                      // TLS, verified against this CA
 *     .clientCertificate(Path.of("client.pem"), Path.of("client.key")) // mutual TLS (PKCS#8 PEM key)
 *     .clientToken(System.getenv("GPT_GRPC_TOKEN"))                   // data-plane calls
 *     .defaultDeadline(Duration.ofSeconds(30))
 *     .build();
 * }</pre>
 *
 * <p>It does not connect: the first call does.
 */
public final class GatewayChannelBuilder {
  private final String target;
  private boolean plaintext;
  private Path caFile;
  private Path certFile;
  private Path keyFile;
  private String authority;
  private String adminToken;
  private String clientToken;
  private Duration defaultDeadline;

  GatewayChannelBuilder(String target) {
    if (target == null || target.isBlank()) {
      throw new IllegalArgumentException("gpt-grpc: the target is empty (want host:port)");
    }
    this.target = target;
  }

  /** Plaintext (no TLS), e.g. a gateway on loopback or behind a service mesh. Default: TLS. */
  public GatewayChannelBuilder plaintext() {
    this.plaintext = true;
    return this;
  }

  /** Verifies the gateway's certificate against the PEM CA certificates of this file, not the system roots. */
  public GatewayChannelBuilder caFile(Path pemFile) {
    this.caFile = pemFile;
    return this;
  }

  /** Presents this PEM certificate chain and its PKCS#8 PEM private key to the gateway (mutual TLS). */
  public GatewayChannelBuilder clientCertificate(Path certChainFile, Path privateKeyFile) {
    this.certFile = certChainFile;
    this.keyFile = privateKeyFile;
    return this;
  }

  /** The name checked against the gateway's certificate (default: the host of the target). */
  public GatewayChannelBuilder authority(String authority) {
    this.authority = authority;
    return this;
  }

  /** Sends {@code authorization: Bearer <token>} with the admin RPCs ({@link Rpcs#ADMIN}) and no other call. */
  public GatewayChannelBuilder adminToken(String token) {
    GatewayTokens.of(token, null); // validates now rather than at build()
    this.adminToken = token;
    return this;
  }

  /** Sends {@code authorization: Bearer <token>} with every data-plane call: a token from CreateClient. */
  public GatewayChannelBuilder clientToken(String token) {
    GatewayTokens.of(null, token);
    this.clientToken = token;
    return this;
  }

  /** The deadline of every call that sets none itself. */
  public GatewayChannelBuilder defaultDeadline(Duration deadline) {
    this.defaultDeadline = Stubs.checkedTimeout(deadline);
    return this;
  }

  /** The connection. */
  public GatewayChannel buildChannel() {
    ManagedChannelBuilder<?> builder = Grpc.newChannelBuilder(target, credentials());
    if (authority != null) {
      builder.overrideAuthority(authority);
    }
    GatewayTokens tokens = adminToken == null && clientToken == null ? null : GatewayTokens.of(adminToken, clientToken);
    return new GatewayChannel(builder.build(), new CallDefaults(tokens, defaultDeadline));
  }

  /** A blocking client on a new connection ({@link GatewayClient#async()} gives the async one on the same). */
  public GatewayClient build() {
    return new GatewayClient(buildChannel());
  }

  private ChannelCredentials credentials() {
    if (plaintext) {
      if (caFile != null || certFile != null) {
        throw new IllegalStateException("gpt-grpc: plaintext() cannot be combined with TLS options");
      }
      return InsecureChannelCredentials.create();
    }
    TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
    try {
      if (caFile != null) {
        tls.trustManager(caFile.toFile());
      }
      if (certFile != null) {
        tls.keyManager(certFile.toFile(), keyFile.toFile());
      }
    } catch (IOException e) {
      throw new UncheckedIOException("gpt-grpc: reading the TLS files: " + e.getMessage(), e);
    }
    return tls.build();
  }
}
