//! Registration records: search, open, delete.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::enrollments::ConfirmPage;
use super::overview::RegRow;
use super::{Console, Form, Layout, PAGE, Signed, enc, failure, page, pretty, see_other, when};
use crate::auth::Right;
use crate::error::ApiError;
use crate::management::{self, Precondition};

#[derive(Template)]
#[template(path = "console/registrations.html")]
struct ListPage {
    l: Layout,
    q: String,
    records: Vec<RegRow>,
    next: Option<String>,
    first: Option<String>,
    error: Option<String>,
}

/// `GET /console/registrations?q=QUERY&after=CURSOR`, or `?id=ID` to open one record.
pub(super) async fn list(
    State(console): State<Console>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::RegistrationStatusRead) {
        return r;
    }
    let form = Form::query(query.as_deref());
    let id = form.text("id");
    if !id.is_empty() {
        return see_other(&format!("/console/registrations/{}", enc(&id)));
    }
    let q = form.text("q");
    let after = form
        .get("after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0u64);
    let l = signed.layout(&console, "registrations");
    let body = json!({ "query": q }).to_string();
    let result = match management::parse_query(body.as_bytes()) {
        Ok(parsed) => management::registrations(&console.app, &parsed, after, PAGE).await,
        Err(e) => Err(e),
    };
    let here = |after: Option<u64>| {
        let mut url = format!("/console/registrations?q={}", enc(&q));
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        url
    };
    let (status, records, next, error) = match result {
        Ok((items, next)) => (
            StatusCode::OK,
            items.iter().map(RegRow::of).collect(),
            next.map(|n| here(Some(n))),
            None,
        ),
        Err(e) if !matches!(e, ApiError::Store(_)) => (
            super::status_of(&e),
            Vec::new(),
            None,
            Some(e.public_message()),
        ),
        Err(e) => return failure(Some(l), &e),
    };
    page(
        status,
        &ListPage {
            l,
            first: (after > 0).then(|| here(None)),
            q,
            records,
            next,
            error,
        },
    )
}

#[derive(Template)]
#[template(path = "console/registration.html")]
struct ShowPage {
    l: Layout,
    r: RegRow,
    created: String,
    substatus: String,
    error: String,
    etag: String,
    payload: Option<String>,
}

/// `GET /console/registrations/{id}`.
pub(super) async fn show(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::RegistrationStatusRead) {
        return r;
    }
    let l = signed.layout(&console, "registrations");
    let v = match management::get_registration(&console.app, &id).await {
        Ok(v) => v,
        Err(e) => return failure(Some(l), &e),
    };
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let error = match (v.get("errorCode"), v.get("errorMessage")) {
        (Some(code), Some(Value::String(m))) => format!("{code}: {m}"),
        (Some(code), _) => code.to_string(),
        _ => String::new(),
    };
    page(
        StatusCode::OK,
        &ShowPage {
            l,
            created: when(v.get("createdDateTimeUtc").and_then(Value::as_str)),
            substatus: s("substatus"),
            etag: s("etag"),
            payload: v.get("payload").filter(|p| !p.is_null()).map(pretty),
            error,
            r: RegRow::of(&v),
        },
    )
}

/// `GET /console/registrations/{id}/delete`: asks before deleting.
pub(super) async fn delete_form(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::RegistrationStatusWrite) {
        return r;
    }
    let l = signed.layout(&console, "registrations");
    let v = match management::get_registration(&console.app, &id).await {
        Ok(v) => v,
        Err(e) => return failure(Some(l), &e),
    };
    let here = format!("/console/registrations/{}", enc(&id));
    page(
        StatusCode::OK,
        &ConfirmPage {
            l,
            title: format!("Delete the registration record of {id}?"),
            question: "The device's hub identity stays; the device can register again.".into(),
            action: format!("{here}/delete"),
            etag: v["etag"].as_str().unwrap_or_default().to_owned(),
            button: "Delete",
            cancel: here,
        },
    )
}

/// `POST /console/registrations/{id}/delete`, under the etag the confirmation showed.
pub(super) async fn delete(
    State(console): State<Console>,
    signed: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    const ACTION: &str = "registration.delete";
    if let Some(r) = signed
        .refuse_write(&console, Right::RegistrationStatusWrite, ACTION, &id)
        .await
    {
        return r;
    }
    let pre = Precondition::Etag(Form::parse(&body).text("etag"));
    let result = management::delete_registration(&console.app, &id, pre).await;
    signed.audit(&console, ACTION, &id, &result).await;
    match result {
        Ok(()) => {
            signed.flash(
                &console,
                format!("Deleted the registration record of {id}."),
            );
            see_other("/console/registrations")
        }
        Err(e) => failure(Some(signed.layout(&console, "registrations")), &e),
    }
}
