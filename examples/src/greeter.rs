//! The `helloworld.Greeter` gRPC service, written by hand with tonic's
//! `codegen` helpers and `tonic-prost` (what `tonic-prost-build` would
//! generate from `greeter.proto`, without needing `protoc` at build time):
//!
//! ```proto
//! syntax = "proto3";
//! package helloworld;
//! service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; }
//! ```

use std::{convert::Infallible, future::Future, sync::Arc};

use tonic::{
    Status,
    codegen::{BoxFuture, Context, Poll, Service, http},
    server::NamedService,
    transport::{Channel, Endpoint},
};
use tonic_prost::ProstCodec;

/// The request of `SayHello`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The reply of `SayHello`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The path of the `SayHello` method.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// What a greeter does; serve one with [`GreeterServer`].
pub trait Greeter: Send + Sync + 'static {
    /// Answers one `SayHello` call.
    fn say_hello(&self, request: HelloRequest) -> impl Future<Output = Result<HelloReply, Status>> + Send;
}

/// A greeter that says which Hermes worker answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerGreeter;

impl Greeter for WorkerGreeter {
    async fn say_hello(&self, request: HelloRequest) -> Result<HelloReply, Status> {
        let worker = hermes_runtime::context::current().map(|w| w.id());
        let from = worker.map_or_else(|| "outside Hermes".to_owned(), |id| format!("worker {id}"));
        Ok(HelloReply { message: format!("Hello, {}! ({from})", request.name) })
    }
}

/// The gRPC service of a [`Greeter`], to add to tonic's `Routes` or
/// `Server::builder()`.
#[derive(Debug)]
pub struct GreeterServer<T> {
    inner: Arc<T>,
}

impl<T> GreeterServer<T> {
    /// Serves `greeter`.
    pub fn new(greeter: T) -> Self {
        Self { inner: Arc::new(greeter) }
    }

    /// Serves a greeter shared with other servers (one per worker).
    pub fn from_arc(greeter: Arc<T>) -> Self {
        Self { inner: greeter }
    }
}

impl<T> Clone for GreeterServer<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T> NamedService for GreeterServer<T> {
    const NAME: &'static str = "helloworld.Greeter";
}

impl<T: Greeter> Service<http::Request<tonic::body::Body>> for GreeterServer<T> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            if request.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented(format!("no method {}", request.uri().path())).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(SayHello(inner), request).await)
        })
    }
}

struct SayHello<T>(Arc<T>);

impl<T: Greeter> tonic::server::UnaryService<HelloRequest> for SayHello<T> {
    type Response = HelloReply;
    type Future = BoxFuture<tonic::Response<HelloReply>, Status>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.say_hello(request.into_inner()).await.map(tonic::Response::new) })
    }
}

/// A client of the greeter.
#[derive(Debug, Clone)]
pub struct GreeterClient {
    inner: tonic::client::Grpc<Channel>,
}

impl GreeterClient {
    /// Connects to `dst`, such as `http://127.0.0.1:50051`.
    ///
    /// # Errors
    /// An invalid URI or a failed connection.
    pub async fn connect(dst: String) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(dst)?.connect().await?;
        Ok(Self { inner: tonic::client::Grpc::new(channel) })
    }

    /// Calls `SayHello`.
    ///
    /// # Errors
    /// The call's status.
    pub async fn say_hello(&mut self, request: HelloRequest) -> Result<HelloReply, Status> {
        self.inner.ready().await.map_err(|e| Status::unknown(format!("the channel is not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        let reply = self.inner.unary(tonic::Request::new(request), path, codec).await?;
        Ok(reply.into_inner())
    }
}
