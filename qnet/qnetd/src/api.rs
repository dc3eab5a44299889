//! The local API: HTTP/1.1 and JSON on a Unix socket (root only), and the client the CLI and
//! the CNI plugin use.
//!
//! | method and path             | body           | answer                      |
//! |-----------------------------|----------------|-----------------------------|
//! | GET /v1/vpcs                |                | 200, the VPCs               |
//! | POST /v1/vpcs               | a VpcSpec      | 201, the VPC                |
//! | DELETE /v1/vpcs/NAME        |                | 204 (409 if it has members) |
//! | GET /v1/endpoints           |                | 200, the endpoints          |
//! | POST /v1/endpoints          | an EndpointSpec| 201, the endpoint           |
//! | DELETE /v1/endpoints/NAME   |                | 204                         |
//! | GET /v1/security-groups     |                | 200, the groups             |
//! | POST /v1/security-groups    | a SecurityGroup| 201, the group              |
//! | PUT /v1/security-groups/NAME| a SecurityGroup| 200, the group (rules now)  |
//! | DELETE /v1/security-groups/NAME |            | 204 (409 if it guards any)  |
//! | GET /v1/stats               |                | 200, the data plane counters|
//!
//! Errors are `{"error": "..."}` with 400 (invalid), 404, 409 (conflict), 413 or 500.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
pub use hyper::Method;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::daemon::{ApiError, Daemon};
use crate::model::{EndpointSpec, ModelError, SecurityGroup, VpcSpec};

const MAX_BODY: usize = 64 * 1024;

type Answer = (StatusCode, Value);

fn failure(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": msg.to_string() }))
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        let status = match &e {
            ApiError::Model(ModelError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ApiError::Model(ModelError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Model(ModelError::Conflict(_)) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        failure(status, e)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body)
        .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn route(d: &Daemon, method: &Method, path: &str, body: &[u8]) -> Answer {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: Result<Answer, Answer> = match (method, parts.as_slice()) {
        (&Method::GET, ["v1", "vpcs"]) => {
            let s = d.state();
            Ok((
                StatusCode::OK,
                to_value(&s.vpcs.values().collect::<Vec<_>>()),
            ))
        }
        (&Method::POST, ["v1", "vpcs"]) => parse::<VpcSpec>(body).and_then(|spec| {
            let vpc = d.add_vpc(&spec)?;
            Ok((StatusCode::CREATED, to_value(&vpc)))
        }),
        (&Method::DELETE, ["v1", "vpcs", name]) => d
            .delete_vpc(name)
            .map(|()| (StatusCode::NO_CONTENT, Value::Null))
            .map_err(Answer::from),
        (&Method::GET, ["v1", "endpoints"]) => {
            let s = d.state();
            Ok((
                StatusCode::OK,
                to_value(&s.endpoints.values().collect::<Vec<_>>()),
            ))
        }
        (&Method::POST, ["v1", "endpoints"]) => parse::<EndpointSpec>(body).and_then(|spec| {
            let ep = d.add_endpoint(&spec)?;
            Ok((StatusCode::CREATED, to_value(&ep)))
        }),
        (&Method::DELETE, ["v1", "endpoints", name]) => d
            .delete_endpoint(name)
            .map(|()| (StatusCode::NO_CONTENT, Value::Null))
            .map_err(Answer::from),
        (&Method::GET, ["v1", "security-groups"]) => {
            let s = d.state();
            Ok((
                StatusCode::OK,
                to_value(&s.security_groups.values().collect::<Vec<_>>()),
            ))
        }
        (&Method::POST, ["v1", "security-groups"]) => parse::<SecurityGroup>(body).and_then(|g| {
            d.put_security_group(&g, false)?;
            Ok((StatusCode::CREATED, to_value(&g)))
        }),
        (&Method::PUT, ["v1", "security-groups", name]) => {
            parse::<SecurityGroup>(body).and_then(|g| {
                if g.name != *name {
                    return Err(failure(
                        StatusCode::BAD_REQUEST,
                        format!("the body names group {:?}, the path {name:?}", g.name),
                    ));
                }
                d.put_security_group(&g, true)?;
                Ok((StatusCode::OK, to_value(&g)))
            })
        }
        (&Method::DELETE, ["v1", "security-groups", name]) => d
            .delete_security_group(name)
            .map(|()| (StatusCode::NO_CONTENT, Value::Null))
            .map_err(Answer::from),
        (&Method::GET, ["v1", "stats"]) => Ok((
            StatusCode::OK,
            json!({ "overlay_mtu": d.overlay_mtu(), "counters": to_value(&d.counters()) }),
        )),
        (
            _,
            ["v1", "vpcs" | "endpoints" | "security-groups" | "stats"]
            | ["v1", "vpcs" | "endpoints" | "security-groups", _],
        ) => Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            format!("no such resource {path}"),
        )),
    };
    result.unwrap_or_else(|e| e)
}

async fn handle(
    d: Arc<Daemon>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (status, value) = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => route(&d, &method, &path, &body.to_bytes()),
        Err(_) => failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        ),
    };
    if status.is_client_error() || status.is_server_error() {
        tracing::info!(%method, %path, status = status.as_u16(), error = %value["error"], "API call refused");
    }
    let body = if value.is_null() {
        Bytes::new()
    } else {
        Bytes::from(format!("{value}\n"))
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Serves the API on `socket` until the process ends.
pub fn serve(d: Arc<Daemon>, socket: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the API runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("binding the API socket {}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "API listening");
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .context("accepting an API connection")?;
            let d = d.clone();
            tokio::task::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(d.clone(), req));
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "API connection ended");
                }
            });
        }
    })
}

/// Makes one API call on `socket`; the status and the body.
pub fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the API client runtime")?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| {
                format!(
                    "connecting to qnetd at {} (is it running?)",
                    socket.display()
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to qnetd")?;
        tokio::task::spawn(conn);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "qnetd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building the request")?;
        let resp = sender.send_request(req).await.context("calling qnetd")?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading qnetd's answer")?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
}
