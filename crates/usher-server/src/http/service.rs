//! The management API (`service-api.md` §1.2), authenticated with service SAS tokens, plus Usher's
//! own hub routes under `/usher/hubs`.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Ctx, json_response, query_param};
use crate::audit;
use crate::auth::{self, Principal, Right};
use crate::error::ApiError;
use crate::management::{self, DEFAULT_PAGE, Kind, MAX_PAGE, Precondition};

/// Serves one management request; a write (or an attempted one) goes into the audit log with the
/// policy that made it and how it ended.
pub(super) async fn route(ctx: &Ctx<'_>, seg: &[&str]) -> Result<Response, ApiError> {
    let principal = std::sync::OnceLock::new();
    let result = serve(ctx, seg, &principal).await;
    if let Some((action, target)) = write_action(ctx.method, seg) {
        // A policy that proved itself but lacks the right is named too.
        let actor = match (principal.get(), &result) {
            (Some(p), _) | (None, Err(ApiError::MissingRight { policy: p, .. })) => {
                format!("policy:{p}")
            }
            (None, _) => "unauthenticated".to_owned(),
        };
        let record = audit::record(
            actor,
            ctx.peer.map(|p| p.ip()),
            action,
            target,
            audit::outcome(&result),
        );
        audit::append(ctx.app, vec![record]).await;
    }
    result
}

/// The audit action of a write route, and what it writes to.
fn write_action<'s>(method: &Method, seg: &[&'s str]) -> Option<(&'static str, &'s str)> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let kind = |s: &str| {
        if is(s, "enrollments") {
            Some("enrollment")
        } else if is(s, "enrollmentGroups") {
            Some("enrollmentGroup")
        } else {
            None
        }
    };
    let action = match (method.as_str(), seg) {
        ("POST", [coll]) => match kind(coll)? {
            "enrollment" => ("enrollment.bulk", ""),
            _ => ("enrollmentGroup.bulk", ""),
        },
        ("PUT", [u, a]) if is(u, "usher") && is(a, "allocation") => ("allocation.set", ""),
        ("PUT", [coll, id]) => match kind(coll)? {
            "enrollment" => ("enrollment.put", *id),
            _ => ("enrollmentGroup.put", *id),
        },
        ("DELETE", [coll, id]) if is(coll, "registrations") => ("registration.delete", *id),
        ("DELETE", [coll, id]) => match kind(coll)? {
            "enrollment" => ("enrollment.delete", *id),
            _ => ("enrollmentGroup.delete", *id),
        },
        ("PUT", [u, p, name]) if is(u, "usher") && is(p, "policies") => ("policy.create", *name),
        ("DELETE", [u, p, name]) if is(u, "usher") && is(p, "policies") => ("policy.delete", *name),
        ("POST", [u, p, name, r, _]) if is(u, "usher") && is(p, "policies") && is(r, "rotate") => {
            ("policy.rotate", *name)
        }
        ("POST", [u, coll, id, r, _]) if is(u, "usher") && is(r, "rotate") => match kind(coll)? {
            "enrollment" => ("enrollment.rotateKey", *id),
            _ => ("enrollmentGroup.rotateKey", *id),
        },
        ("PUT", [u, h, name]) if is(u, "usher") && is(h, "hubs") => ("hub.add", *name),
        ("PATCH", [u, h, name]) if is(u, "usher") && is(h, "hubs") => ("hub.update", *name),
        ("PUT", [u, c, name]) if is(u, "usher") && is(c, "certificates") => {
            ("certificate.put", *name)
        }
        ("DELETE", [u, c, name]) if is(u, "usher") && is(c, "certificates") => {
            ("certificate.delete", *name)
        }
        ("POST", [u, c, name, op])
            if is(u, "usher") && is(c, "certificates") && is(op, "verify") =>
        {
            ("certificate.verify", *name)
        }
        ("POST", [u, c, name, op])
            if is(u, "usher") && is(c, "certificates") && is(op, "generateVerificationCode") =>
        {
            ("certificate.generateVerificationCode", *name)
        }
        _ => return None,
    };
    Some(action)
}

async fn serve(
    ctx: &Ctx<'_>,
    seg: &[&str],
    principal: &std::sync::OnceLock<String>,
) -> Result<Response, ApiError> {
    let authorize = |right: Right| async move {
        let who = authorize(ctx, right).await?;
        let _ = principal.set(who.policy().to_owned());
        Ok::<_, ApiError>(who)
    };
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let method = ctx.method.clone();
    let kind_of = |s: &str| {
        if is(s, "enrollments") {
            Some(Kind::Enrollment)
        } else if is(s, "enrollmentGroups") {
            Some(Kind::Group)
        } else {
            None
        }
    };
    let app = ctx.app;
    match seg {
        [coll, q] if kind_of(coll).is_some() && is(q, "query") && method == Method::POST => {
            let kind = kind_of(coll).unwrap_or(Kind::Enrollment);
            authorize(Right::EnrollmentRead).await?;
            let query = management::parse_query(ctx.body)?;
            let (after, page) = paging(ctx)?;
            let (items, next) = management::query(app, kind, &query, after, page).await?;
            let item_type = if kind == Kind::Enrollment {
                "Enrollment"
            } else {
                "EnrollmentGroup"
            };
            Ok(query_response(&items, item_type, next))
        }
        [coll, id, a] if kind_of(coll).is_some() && is(a, "attestationmechanism") => {
            let kind = kind_of(coll).unwrap_or(Kind::Enrollment);
            if method != Method::POST {
                return Err(ctx.not_allowed());
            }
            authorize(Right::EnrollmentRead).await?;
            ok_json(&management::attestation_mechanism(app, kind, id).await?)
        }
        [coll] if kind_of(coll).is_some() => {
            let kind = kind_of(coll).unwrap_or(Kind::Enrollment);
            if method != Method::POST {
                return Err(ctx.not_allowed());
            }
            authorize(Right::EnrollmentWrite).await?;
            ok_json(&management::bulk(app, kind, ctx.body).await?)
        }
        [coll, id] if kind_of(coll).is_some() => {
            let kind = kind_of(coll).unwrap_or(Kind::Enrollment);
            let pre = Precondition::from_header(ctx.header("if-match"));
            match method {
                Method::GET => {
                    authorize(Right::EnrollmentRead).await?;
                    ok_json(&management::get(app, kind, id).await?)
                }
                Method::PUT => {
                    authorize(Right::EnrollmentWrite).await?;
                    ok_json(&management::put(app, kind, id, ctx.body, pre).await?)
                }
                Method::DELETE => {
                    authorize(Right::EnrollmentWrite).await?;
                    management::delete(app, kind, id, pre).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(ctx.not_allowed()),
            }
        }
        [r, id] if is(r, "registrations") => {
            let pre = Precondition::from_header(ctx.header("if-match"));
            match method {
                Method::GET => {
                    authorize(Right::RegistrationStatusRead).await?;
                    ok_json(&management::get_registration(app, id).await?)
                }
                Method::DELETE => {
                    authorize(Right::RegistrationStatusWrite).await?;
                    management::delete_registration(app, id, pre).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(ctx.not_allowed()),
            }
        }
        [r, group_id, q] if is(r, "registrations") && is(q, "query") && method == Method::POST => {
            authorize(Right::RegistrationStatusRead).await?;
            let (after, page) = paging(ctx)?;
            let (items, next) = management::group_registrations(app, group_id, after, page).await?;
            Ok(query_response(&items, "DeviceRegistration", next))
        }
        [u, p] if is(u, "usher") && is(p, "policies") && method == Method::GET => {
            authorize(Right::ServiceConfig).await?;
            ok_json(&management::policies(app).await?)
        }
        [u, p, name] if is(u, "usher") && is(p, "policies") => {
            authorize(Right::ServiceConfig).await?;
            match method {
                Method::PUT => ok_json(&management::add_policy(app, name, ctx.body).await?),
                Method::DELETE => {
                    management::delete_policy(app, name).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(ctx.not_allowed()),
            }
        }
        [u, p, name, r, which]
            if is(u, "usher") && is(p, "policies") && is(r, "rotate") && method == Method::POST =>
        {
            authorize(Right::ServiceConfig).await?;
            ok_json(&management::rotate_policy_key(app, name, which).await?)
        }
        [u, a] if is(u, "usher") && is(a, "audit") && method == Method::GET => {
            authorize(Right::ServiceConfig).await?;
            let number = |name: &str, default: u64| match query_param(ctx.query, name) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().map_err(|_| {
                    ApiError::InvalidArgument(format!("{name} {v:?} is not a whole number"))
                }),
            };
            let after = number("after", 0)?;
            let limit = number("limit", DEFAULT_PAGE)?.clamp(1, MAX_PAGE);
            let (anchor_seq, anchor_hash) = app.store.audit_anchor().await?;
            let entries = app.store.audit_entries(after, limit).await?;
            ok_json(&serde_json::json!({
                "anchor": {"seq": anchor_seq, "hash": anchor_hash},
                "entries": entries,
            }))
        }
        [u, coll, id, r, which]
            if is(u, "usher")
                && kind_of(coll).is_some()
                && is(r, "rotate")
                && method == Method::POST =>
        {
            let kind = kind_of(coll).unwrap_or(Kind::Enrollment);
            authorize(Right::EnrollmentWrite).await?;
            let pre = Precondition::from_header(ctx.header("if-match"));
            ok_json(&management::rotate_enrollment_key(app, kind, id, which, pre).await?)
        }
        [u, h] if is(u, "usher") && is(h, "hubs") && method == Method::GET => {
            authorize(Right::ServiceConfig).await?;
            ok_json(&management::hubs(app).await?)
        }
        [u, h, name] if is(u, "usher") && is(h, "hubs") && method == Method::PUT => {
            authorize(Right::ServiceConfig).await?;
            ok_json(&management::add_hub(app, name, ctx.body).await?)
        }
        [u, h, name] if is(u, "usher") && is(h, "hubs") && method == Method::PATCH => {
            authorize(Right::ServiceConfig).await?;
            ok_json(&management::update_hub(app, name, ctx.body).await?)
        }
        [u, c] if is(u, "usher") && is(c, "certificates") && method == Method::GET => {
            authorize(Right::ServiceConfig).await?;
            ok_json(&crate::certificates::list(app).await?)
        }
        [u, c, name] if is(u, "usher") && is(c, "certificates") => {
            authorize(Right::ServiceConfig).await?;
            let pre = Precondition::from_header(ctx.header("if-match"));
            match method {
                Method::GET => ok_json(&crate::certificates::get(app, name).await?),
                Method::PUT => ok_json(&crate::certificates::put(app, name, ctx.body, pre).await?),
                Method::DELETE => {
                    crate::certificates::delete(app, name, pre).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(ctx.not_allowed()),
            }
        }
        [u, c, name, op] if is(u, "usher") && is(c, "certificates") => {
            if method != Method::POST {
                return Err(ctx.not_allowed());
            }
            authorize(Right::ServiceConfig).await?;
            let pre = Precondition::from_header(ctx.header("if-match"));
            if is(op, "generateVerificationCode") {
                ok_json(&crate::certificates::generate_verification_code(app, name, pre).await?)
            } else if is(op, "verify") {
                ok_json(&crate::certificates::verify(app, name, ctx.body, pre).await?)
            } else {
                Err(ApiError::NoRoute(format!(
                    "/usher/certificates/{name}/{op}"
                )))
            }
        }
        [u, a] if is(u, "usher") && is(a, "allocation") => {
            authorize(Right::ServiceConfig).await?;
            match method {
                Method::GET => ok_json(&management::allocation(app).await?),
                Method::PUT => ok_json(&management::set_allocation(app, ctx.body).await?),
                _ => Err(ctx.not_allowed()),
            }
        }
        [u, h, name, d]
            if is(u, "usher") && is(h, "hubs") && is(d, "devices") && method == Method::GET =>
        {
            authorize(Right::ServiceConfig).await?;
            let (cursor, page) = paging(ctx)?;
            let (items, next) = management::hub_devices(app, name, cursor, page).await?;
            Ok(query_response(&items, "Device", next))
        }
        _ => Err(ApiError::NoRoute(format!("{method} /{}", seg.join("/")))),
    }
}

fn ok_json<T: serde::Serialize>(body: &T) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, body))
}

/// A query page: always a JSON array; `x-ms-continuation` only when another page exists (an
/// empty header would make the Node client loop forever).
fn query_response(items: &[Value], item_type: &'static str, next: Option<u64>) -> Response {
    let mut response = json_response(StatusCode::OK, items);
    let headers = response.headers_mut();
    headers.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if let Some(next) = next {
        headers.insert("x-ms-continuation", HeaderValue::from(next));
    }
    response
}

/// Reads `x-ms-max-item-count` (default 100, clamped to 1..=1000) and `x-ms-continuation` (the
/// opaque cursor a previous page returned).
fn paging(ctx: &Ctx<'_>) -> Result<(u64, u64), ApiError> {
    let page = match ctx.header("x-ms-max-item-count") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| {
                ApiError::InvalidArgument(format!("x-ms-max-item-count {v:?} is not a number"))
            })?
            .clamp(1, MAX_PAGE as i64) as u64,
    };
    let cursor = match ctx.header("x-ms-continuation").filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => v.trim().parse().map_err(|_| {
            ApiError::InvalidArgument(format!(
                "x-ms-continuation {v:?} is not a token this service issued"
            ))
        })?,
    };
    Ok((cursor, page))
}

/// Authenticates the request's service SAS token and checks that its policy holds `right`.
async fn authorize(ctx: &Ctx<'_>, right: Right) -> Result<Principal, ApiError> {
    let principal = auth::authenticate_token(ctx.app, ctx.header("authorization")).await?;
    auth::authorize(&principal, right)?;
    Ok(principal)
}

/// The collection `POST /usher/{enrollments|enrollmentGroups}/import` imports into.
pub(super) fn import_kind(method: &Method, seg: &[&str]) -> Option<Kind> {
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    match seg {
        [u, coll, i] if *method == Method::POST && is(u, "usher") && is(i, "import") => {
            if is(coll, "enrollments") {
                Some(Kind::Enrollment)
            } else if is(coll, "enrollmentGroups") {
                Some(Kind::Group)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Lines stored per transaction by an import.
const IMPORT_BATCH: usize = 5000;
/// Bytes of lines a batch holds at most (lines may each be up to the 96 KB message limit, so the
/// line count alone would let a batch hold hundreds of megabytes).
const IMPORT_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Item failures an import answer lists (it counts them all).
const IMPORT_ERRORS_LISTED: usize = 1000;

/// `POST /usher/{enrollments|enrollmentGroups}/import?mode=create|update`: JSON Lines, one
/// enrollment (or group) per line, as `usher enrollment export` writes them. The body is streamed:
/// lines are validated as they arrive and stored [`IMPORT_BATCH`] (or [`IMPORT_BATCH_BYTES`]) to a
/// transaction, the next batch being parsed while the previous one commits, so memory does not
/// grow with the file. Each line
/// stands alone (a bad line or, in create mode, an existing record is listed in `errors` with its
/// line number); a line longer than the message limit is such an error too. The answer counts
/// what was stored. If the body stops arriving (the body timeout between chunks) or is cut, the
/// request fails and the batches already committed stay: rerun with `mode=update`.
pub(super) async fn import(
    app: &crate::app::App,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    limits: crate::server::HttpLimits,
    peer: Option<std::net::SocketAddr>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let token = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let who = auth::authenticate_token(app, token).await;
    let actor = match &who {
        Ok(p) => format!("policy:{}", p.policy()),
        Err(_) => "unauthenticated".to_owned(),
    };
    let action = match kind {
        Kind::Enrollment => "enrollment.import",
        Kind::Group => "enrollmentGroup.import",
    };
    let result = async {
        auth::authorize(&who?, Right::EnrollmentWrite)?;
        let mode_text = query_param(parts.uri.query(), "mode").unwrap_or("create");
        let mode = management::ImportMode::parse(mode_text).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "unknown import mode {mode_text:?}; expected create or update"
            ))
        })?;
        import_stream(app, body, limits, kind, mode).await
    }
    .await;
    let outcome = match &result {
        Ok(r) => format!("ok imported {} failed {}", r.imported, r.failed),
        Err(e) => audit::refused(e),
    };
    let record = audit::record(actor, peer.map(|p| p.ip()), action, "", outcome);
    audit::append(app, vec![record]).await;
    let report = result?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "imported": report.imported,
            "failed": report.failed,
            "errors": report.errors,
        }),
    ))
}

struct ImportReport {
    imported: u64,
    failed: u64,
    errors: Vec<Value>,
}

async fn import_stream(
    app: &crate::app::App,
    mut body: axum::body::Body,
    limits: crate::server::HttpLimits,
    kind: Kind,
    mode: management::ImportMode,
) -> Result<ImportReport, ApiError> {
    use http_body_util::BodyExt as _;
    let mut report = ImportReport {
        imported: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let known = management::Known::read(app).await?;
    let mut lines = LineSplitter::default();
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(IMPORT_BATCH);
    let mut batch_bytes = 0;
    // The batch being committed while the next one is read and prepared: commits stay in line
    // order (the next is started only after the previous finished), preparation overlaps them.
    let mut pending: Option<tokio::task::JoinHandle<ImportOutcome>> = None;
    loop {
        let frame = tokio::time::timeout(limits.body_timeout, body.frame())
            .await
            .map_err(|_| ApiError::BodyTimeout(limits.body_timeout))?;
        let finished = match frame {
            None => true,
            Some(Err(e)) => return Err(ApiError::BodyUnreadable(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    lines.push(&chunk);
                }
                false
            }
        };
        if finished {
            lines.finish();
        }
        for line in lines.take() {
            match line {
                Line::Text(number, text) => {
                    batch_bytes += text.len();
                    batch.push((number, text));
                }
                Line::TooLong(number) => {
                    note_failure(&mut report, number, "", &ApiError::BodyTooLarge)
                }
            }
        }
        if batch.len() >= IMPORT_BATCH
            || batch_bytes >= IMPORT_BATCH_BYTES
            || (finished && !batch.is_empty())
        {
            let items = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
            batch_bytes = 0;
            let prepared = management::prepare_import(kind, mode, items, &known);
            if let Some(previous) = pending.take() {
                absorb(&mut report, previous.await)?;
            }
            let app = app.clone();
            pending = Some(tokio::spawn(async move {
                management::commit_import(&app, prepared).await
            }));
        }
        if finished {
            break;
        }
    }
    if let Some(previous) = pending.take() {
        absorb(&mut report, previous.await)?;
    }
    Ok(report)
}

type ImportOutcome = Result<(u64, Vec<management::ImportFailure>), ApiError>;

/// One complete line of an import body (numbered from 1), or the number of a line that outgrew
/// the message limit (its bytes are dropped as they arrive, so memory stays bounded).
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(u64, Vec<u8>),
    TooLong(u64),
}

/// Splits a body arriving in chunks into lines; blank lines are numbered but not returned.
#[derive(Default)]
struct LineSplitter {
    current: Vec<u8>,
    too_long: bool,
    number: u64,
    done: Vec<Line>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) {
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let (content, ended) = match piece.strip_suffix(b"\n") {
                Some(content) => (content, true),
                None => (piece, false),
            };
            if !self.too_long {
                if self.current.len() + content.len() > super::MAX_BODY {
                    self.too_long = true;
                    self.current = Vec::new();
                } else {
                    self.current.extend_from_slice(content);
                }
            }
            if ended {
                self.end_line();
            }
        }
    }

    /// The body ended: a last line without a newline counts too.
    fn finish(&mut self) {
        if self.too_long || !self.current.is_empty() {
            self.end_line();
        }
    }

    fn end_line(&mut self) {
        self.number += 1;
        let text = std::mem::take(&mut self.current);
        if std::mem::take(&mut self.too_long) {
            self.done.push(Line::TooLong(self.number));
        } else if !text.iter().all(u8::is_ascii_whitespace) {
            self.done.push(Line::Text(self.number, text));
        }
    }

    fn take(&mut self) -> Vec<Line> {
        std::mem::take(&mut self.done)
    }
}

fn absorb(
    report: &mut ImportReport,
    joined: Result<ImportOutcome, tokio::task::JoinError>,
) -> Result<(), ApiError> {
    let (imported, failures) = joined.map_err(|e| {
        ApiError::Store(crate::store::StoreError::Database(format!(
            "an import batch did not finish: {e}"
        )))
    })??;
    report.imported += imported;
    for f in failures {
        note_failure(report, f.line, &f.id, &f.error);
    }
    Ok(())
}

fn note_failure(report: &mut ImportReport, line: u64, id: &str, e: &ApiError) {
    report.failed += 1;
    if report.errors.len() < IMPORT_ERRORS_LISTED {
        report.errors.push(serde_json::json!({
            "line": line,
            "id": id,
            "errorCode": e.code().code(),
            "errorStatus": e.public_message(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::{Line, LineSplitter};

    fn split(chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            out.extend(s.take());
        }
        s.finish();
        out.extend(s.take());
        out
    }

    #[test]
    fn lines_are_numbered_across_chunks_and_blank_ones_skipped() {
        let lines = split(&[b"{\"a\"", b":1}\n\n  \n{\"b\":2}", b"\n{\"c\":3}"]);
        assert_eq!(
            lines,
            vec![
                Line::Text(1, b"{\"a\":1}".to_vec()),
                Line::Text(4, b"{\"b\":2}".to_vec()),
                Line::Text(5, b"{\"c\":3}".to_vec()),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_refused_without_buffering_it() {
        let big = vec![b'x'; super::super::MAX_BODY / 2 + 1];
        let mut s = LineSplitter::default();
        s.push(&big);
        s.push(&big);
        assert!(s.current.is_empty(), "dropped once over the limit");
        s.push(b"\nok\n");
        s.finish();
        assert_eq!(
            s.take(),
            vec![Line::TooLong(1), Line::Text(2, b"ok".to_vec())]
        );
    }
}
