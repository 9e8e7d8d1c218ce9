//! The peer of `cargo xtask bench agent`'s load figures: the smallest hyper server over the
//! same runtime and allocator as the agent, answering every request on a Unix socket with
//! the same bytes the agent answers (read from a file at start), so the bench measures what
//! hyper and tokio themselves cost beside the bench client on the same cores.
//!
//! `bench-peer SOCKET BODY_FILE [WORKER_THREADS]` (default: one per CPU, as the agent);
//! serves until killed.

use std::convert::Infallible;

use axum::body::Bytes;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, body, rest @ ..] = args.as_slice() else {
        return Err("usage: bench-peer SOCKET BODY_FILE [WORKER_THREADS]".into());
    };
    let body = Bytes::from(std::fs::read(body)?);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = rest.first() {
        rt.worker_threads(n.parse::<usize>()?.max(1));
    }
    rt.build()?.block_on(async move {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut resp = hyper::Response::new(axum::body::Body::from(body));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/xml"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
