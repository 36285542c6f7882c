// Package gptgrpc is a small wrapper around the generated gptgrpc.v1 client
// (package gptgrpcv1): it dials a gpt-grpc gateway with TLS or mTLS, attaches
// the admin token to the admin RPCs only (Configure, CreateClient,
// ListClients, UpdateClient, RevokeClient) and a client token to the others,
// and decodes the google.rpc error details that the gateway attaches to
// every failure.
//
//	c, err := gptgrpc.Dial("gateway.internal:50051",
//		gptgrpc.WithCAFile("ca.pem"),
//		gptgrpc.WithClientCertFiles("client.pem", "client-key.pem"),
//		gptgrpc.WithClientToken(os.Getenv("GPT_GRPC_TOKEN")),       // data-plane calls
//		gptgrpc.WithAdminToken(os.Getenv("GPT_GRPC_ADMIN_TOKEN"))) // admin calls only
//	if err != nil { ... }
//	defer c.Close()
//	res, err := c.ChatCompletion(ctx, &gptgrpcv1.ChatCompletionRequest{UserMessage: "hi"})
//	if err != nil {
//		reason, _, retry, _ := gptgrpc.ErrorDetails(err)
//		...
//	}
package gptgrpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// Client is a gptgrpc.v1.GPTService client over one gRPC connection. All
// generated RPC methods (ChatCompletion, StreamChatCompletion, CountTokens,
// Configure, ...) are available on it. It is safe for concurrent use.
type Client struct {
	gptgrpcv1.GPTServiceClient
	conn *grpc.ClientConn
}

// Conn returns the underlying connection (for health checks or other services).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; calls in flight fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// Option configures Dial.
type Option func(*options) error

type options struct {
	insecure    bool
	tlsConfig   *tls.Config
	roots       *x509.CertPool
	certs       []tls.Certificate
	serverName  string
	adminToken  string
	clientToken string
	// loadBalancing is a gRPC policy name (WithLoadBalancing); "" leaves gRPC's default.
	loadBalancing string
	dialOptions   []grpc.DialOption
}

// WithInsecure dials without TLS (plaintext, e.g. a gateway on loopback or
// behind a service mesh). Without it, Dial uses TLS.
func WithInsecure() Option {
	return func(o *options) error { o.insecure = true; return nil }
}

// WithTLSConfig uses cfg (cloned) as the base TLS configuration. The CA and
// client certificate options below are applied on top of it.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil {
			return errors.New("gptgrpc: WithTLSConfig(nil)")
		}
		o.tlsConfig = cfg.Clone()
		return nil
	}
}

// WithCA verifies the gateway's certificate against the PEM CA
// certificates in pem instead of the system roots.
func WithCA(pem []byte) Option {
	return func(o *options) error {
		if o.roots == nil {
			o.roots = x509.NewCertPool()
		}
		if !o.roots.AppendCertsFromPEM(pem) {
			return errors.New("gptgrpc: no PEM certificate found in the CA bundle")
		}
		return nil
	}
}

// WithCAFile is WithCA with the bundle read from a file.
func WithCAFile(path string) Option {
	return func(o *options) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("gptgrpc: reading CA file: %w", err)
		}
		return WithCA(pem)(o)
	}
}

// WithClientCert presents cert to the gateway (mutual TLS).
func WithClientCert(cert tls.Certificate) Option {
	return func(o *options) error { o.certs = append(o.certs, cert); return nil }
}

// WithClientCertFiles is WithClientCert with a PEM certificate chain and key
// read from files.
func WithClientCertFiles(certFile, keyFile string) Option {
	return func(o *options) error {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("gptgrpc: loading client certificate: %w", err)
		}
		return WithClientCert(cert)(o)
	}
}

// WithServerName overrides the name checked against the gateway's
// certificate (default: the host of the target).
func WithServerName(name string) Option {
	return func(o *options) error { o.serverName = name; return nil }
}

// WithAdminToken sends "authorization: Bearer <token>" with the admin RPCs
// (see IsAdminMethod), and with no other call. A token set on the call's
// context with ContextWithToken takes precedence.
func WithAdminToken(token string) Option {
	return func(o *options) error {
		if token == "" {
			return errors.New("gptgrpc: WithAdminToken with an empty token")
		}
		o.adminToken = token
		return nil
	}
}

// WithClientToken sends "authorization: Bearer <token>" with every call that
// is not an admin RPC (chat, CountTokens, ListModels, GetUsage...): the token
// of a client made with CreateClient. Once clients are defined, the gateway
// requires one. A token set on the call's context takes precedence.
func WithClientToken(token string) Option {
	return func(o *options) error {
		if token == "" {
			return errors.New("gptgrpc: WithClientToken with an empty token")
		}
		o.clientToken = token
		return nil
	}
}

// WithDialOptions passes extra options to grpc.NewClient (interceptors,
// keepalive, a custom dialer...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) error { o.dialOptions = append(o.dialOptions, opts...); return nil }
}

// adminMethods are the RPCs that take the admin bearer token; every other
// RPC is a data-plane call (dataPlaneMethods lists the known ones, so that a
// test notices an RPC added to the proto and not classified here).
var (
	adminMethods = map[string]bool{
		gptgrpcv1.GPTService_Configure_FullMethodName:    true,
		gptgrpcv1.GPTService_CreateClient_FullMethodName: true,
		gptgrpcv1.GPTService_ListClients_FullMethodName:  true,
		gptgrpcv1.GPTService_UpdateClient_FullMethodName: true,
		gptgrpcv1.GPTService_RevokeClient_FullMethodName: true,
	}
	dataPlaneMethods = map[string]bool{
		gptgrpcv1.GPTService_ChatCompletion_FullMethodName:       true,
		gptgrpcv1.GPTService_StreamChatCompletion_FullMethodName: true,
		gptgrpcv1.GPTService_CountTokens_FullMethodName:          true,
		gptgrpcv1.GPTService_GetConfiguration_FullMethodName:     true,
		gptgrpcv1.GPTService_ListModels_FullMethodName:           true,
		gptgrpcv1.GPTService_GetUsage_FullMethodName:             true,
		// Conversations: the admin token may be sent on ListConversations and
		// DeleteConversation with ContextWithAdminToken, to reach every client's.
		gptgrpcv1.GPTService_CreateConversation_FullMethodName: true,
		gptgrpcv1.GPTService_Converse_FullMethodName:           true,
		gptgrpcv1.GPTService_StreamConverse_FullMethodName:     true,
		gptgrpcv1.GPTService_GetConversation_FullMethodName:    true,
		gptgrpcv1.GPTService_ListConversations_FullMethodName:  true,
		gptgrpcv1.GPTService_DeleteConversation_FullMethodName: true,
		gptgrpcv1.GPTService_ListUpstreams_FullMethodName:      true,
	}
)

// IsAdminMethod reports whether fullMethod ("/gptgrpc.v1.GPTService/Configure")
// is an admin RPC, which takes the admin token rather than a client token.
func IsAdminMethod(fullMethod string) bool { return adminMethods[fullMethod] }

// Dial creates a client for the gateway at target ("host:port" or any
// grpc.NewClient target, such as "dns:///gateway.internal:50051", plus gRPC's
// "ipv4:10.0.0.1:50051,10.0.0.2:50051" and "ipv6:[::1]:50051" address lists).
// It does not wait for the connection: the first call connects. Without
// WithInsecure it uses TLS, verified against the system roots unless WithCA
// or WithCAFile is given. With several replicas behind the target,
// WithLoadBalancing(RoundRobin) spreads the calls over them.
func Dial(target string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	dialOpts := make([]grpc.DialOption, 0, 2+len(o.dialOptions))
	if o.insecure {
		if o.tlsConfig != nil || o.roots != nil || len(o.certs) > 0 || o.serverName != "" {
			return nil, errors.New("gptgrpc: WithInsecure cannot be combined with TLS options")
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		cfg := o.tlsConfig
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if o.roots != nil {
			cfg.RootCAs = o.roots
		}
		if len(o.certs) > 0 {
			cfg.Certificates = append(cfg.Certificates, o.certs...)
		}
		if o.serverName != "" {
			cfg.ServerName = o.serverName
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	if o.adminToken != "" || o.clientToken != "" {
		t := tokens{admin: o.adminToken, client: o.clientToken}
		dialOpts = append(dialOpts,
			grpc.WithChainUnaryInterceptor(t.unary),
			grpc.WithChainStreamInterceptor(t.stream))
	}
	if o.loadBalancing != "" {
		dialOpts = append(dialOpts, grpc.WithDefaultServiceConfig(serviceConfig(o.loadBalancing)))
	}
	static, resolverOpt, ok, err := staticTarget(target)
	if err != nil {
		return nil, err
	}
	if ok {
		target = static
		dialOpts = append(dialOpts, resolverOpt)
	}
	dialOpts = append(dialOpts, o.dialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("gptgrpc: %w", err)
	}
	return &Client{GPTServiceClient: gptgrpcv1.NewGPTServiceClient(conn), conn: conn}, nil
}

// ContextWithToken returns a context whose calls carry
// "authorization: Bearer <token>" (an admin or a client token), overriding
// WithAdminToken and WithClientToken for those calls.
func ContextWithToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// ContextWithAdminToken is ContextWithToken with the admin token: use it for
// admin calls (or GetUsage of any client) only.
func ContextWithAdminToken(ctx context.Context, token string) context.Context {
	return ContextWithToken(ctx, token)
}

// tokens attaches the admin token to admin RPCs and the client token to the others.
type tokens struct{ admin, client string }

func (t tokens) withToken(ctx context.Context, method string) context.Context {
	token := t.client
	if adminMethods[method] {
		token = t.admin
	}
	if token == "" {
		return ctx
	}
	if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get("authorization")) > 0 {
		return ctx
	}
	return ContextWithToken(ctx, token)
}

func (t tokens) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(t.withToken(ctx, method), method, req, reply, cc, opts...)
}

func (t tokens) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(t.withToken(ctx, method), desc, cc, method, opts...)
}
