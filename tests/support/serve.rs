//! The two ways in: a tower `Service` for an in-process `kube::Client`, and plain HTTP on
//! a socket (with a kubeconfig) for other processes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handler::FakeBody;
use super::{FakeApi, Unavailable};

/// The fake as a tower service: what `kube::Client::new` runs requests through.
#[derive(Clone)]
pub struct FakeService {
    pub(crate) api: FakeApi,
}

impl<B> tower::Service<Request<B>> for FakeService
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<FakeBody>;
    type Error = Unavailable;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let api = self.api.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(|_| Unavailable)?.to_bytes();
            api.handle(parts, bytes).await
        })
    }
}

/// The fake served over plain HTTP. Stops serving (and closes its connections) on drop.
pub struct FakeServer {
    addr: SocketAddr,
    _stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl FakeApi {
    /// Serves this fake (same state) on `addr`; port 0 picks a free port.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(());
        let api = self.clone();
        let task = tokio::spawn(accept_loop(api, listener, stopped));
        Ok(FakeServer {
            addr,
            _stop: stop,
            task,
        })
    }
}

async fn accept_loop(api: FakeApi, listener: TcpListener, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let api = api.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut svc = FakeService { api: api.clone() };
                tower::Service::call(&mut svc, req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

impl FakeServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (IPv6 addresses in brackets).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: no TLS, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vipam-fake\n  cluster:\n    server: {}\ncontexts:\n- name: vipam-fake\n  context:\n    cluster: vipam-fake\n    user: vipam-fake\n    namespace: default\ncurrent-context: vipam-fake\nusers:\n- name: vipam-fake\n  user: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A client that reaches this server over TCP, configured from the kubeconfig text.
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig())
            .map_err(|e| kube::Error::Service(e.into()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| kube::Error::Service(e.into()))?;
        kube::Client::try_from(config)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
