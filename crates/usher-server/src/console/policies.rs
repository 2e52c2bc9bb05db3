//! Shared access policies: list (keys hidden until asked), create, rotate keys, delete.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::enrollments::ConfirmPage;
use super::{Console, Form, Layout, Signed, enc, failure, page, see_other};
use crate::auth::Right;
use crate::management;

struct PolicyRow {
    name: String,
    rights: String,
    /// Keys and connection string, only for the policy whose keys were asked for.
    keys: Option<PolicyKeys>,
    owner: bool,
}

struct PolicyKeys {
    primary: String,
    secondary: String,
    connection_string: String,
}

#[derive(Template)]
#[template(path = "console/policies.html")]
struct PoliciesPage {
    l: Layout,
    policies: Vec<PolicyRow>,
    rights: Vec<&'static str>,
    error: Option<String>,
    new_name: String,
    new_rights: Vec<String>,
}

async fn policies_page(
    console: &Console,
    l: Layout,
    show: Option<&str>,
    status: StatusCode,
    error: Option<String>,
    new: (String, Vec<String>),
) -> Response {
    let list = match management::policies(&console.app).await {
        Ok(p) => p,
        Err(e) => return failure(Some(l), &e),
    };
    let host = &console.app.instance.service_host;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let policies = list
        .iter()
        .map(|p| {
            let name = s(p, "keyName");
            PolicyRow {
                keys: (show == Some(name.as_str())).then(|| PolicyKeys {
                    connection_string: format!(
                        "HostName={host};SharedAccessKeyName={name};SharedAccessKey={}",
                        s(p, "primaryKey")
                    ),
                    primary: s(p, "primaryKey"),
                    secondary: s(p, "secondaryKey"),
                }),
                rights: s(p, "rights"),
                owner: name == crate::app::OWNER_POLICY,
                name,
            }
        })
        .collect();
    page(
        status,
        &PoliciesPage {
            l,
            policies,
            rights: Right::ALL.iter().map(|r| r.name()).collect(),
            error,
            new_name: new.0,
            new_rights: new.1,
        },
    )
}

/// `GET /console/policies[?show=NAME]`.
pub(super) async fn list(
    State(console): State<Console>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::ServiceConfig) {
        return r;
    }
    let q = Form::query(query.as_deref());
    let l = signed.layout(&console, "policies");
    policies_page(
        &console,
        l,
        q.get("show"),
        StatusCode::OK,
        None,
        Default::default(),
    )
    .await
}

/// `POST /console/policies`: creates a policy with generated keys (`PUT /usher/policies/{name}`).
pub(super) async fn create(
    State(console): State<Console>,
    signed: Signed,
    body: Bytes,
) -> Response {
    const ACTION: &str = "policy.create";
    let form = Form::parse(&body);
    let name = form.text("name");
    if let Some(r) = signed
        .refuse_write(&console, Right::ServiceConfig, ACTION, &name)
        .await
    {
        return r;
    }
    let rights = form.all("rights");
    let l = signed.layout(&console, "policies");
    let body = json!({ "rights": rights }).to_string();
    let result = management::add_policy(&console.app, &name, body.as_bytes()).await;
    signed.audit(&console, ACTION, &name, &result).await;
    match result {
        Ok(_) => {
            signed.flash(
                &console,
                format!("Created the policy {name} with generated keys."),
            );
            see_other("/console/policies")
        }
        Err(e) => {
            policies_page(
                &console,
                l,
                None,
                super::status_of(&e),
                Some(e.public_message()),
                (name, rights),
            )
            .await
        }
    }
}

/// `POST /console/policies/{name}/rotate` (`which` = primary, secondary, both or swap).
pub(super) async fn rotate(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    const ACTION: &str = "policy.rotate";
    if let Some(r) = signed
        .refuse_write(&console, Right::ServiceConfig, ACTION, &name)
        .await
    {
        return r;
    }
    let which = Form::parse(&body).text("which");
    let result = management::rotate_policy_key(&console.app, &name, &which).await;
    signed.audit(&console, ACTION, &name, &result).await;
    match result {
        Ok(_) => {
            let what = match which.as_str() {
                "swap" => "Swapped the keys of".to_owned(),
                "both" => "Replaced both keys of".to_owned(),
                other => format!("Replaced the {other} key of"),
            };
            signed.flash(&console, format!("{what} {name}."));
            // Rotating the key this session signed in with ends the session; the next page is
            // the sign-in form.
            see_other("/console/policies")
        }
        Err(e) => failure(Some(signed.layout(&console, "policies")), &e),
    }
}

/// `GET /console/policies/{name}/delete`: asks before deleting.
pub(super) async fn delete_form(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = signed.refuse(&console, Right::ServiceConfig) {
        return r;
    }
    let here = "/console/policies".to_owned();
    page(
        StatusCode::OK,
        &ConfirmPage {
            l: signed.layout(&console, "policies"),
            title: format!("Delete the policy {name}?"),
            question: "Tokens signed with its keys stop working at once, and consoles signed in \
                       with it are signed out."
                .into(),
            action: format!("/console/policies/{}/delete", enc(&name)),
            etag: String::new(),
            button: "Delete",
            cancel: here,
        },
    )
}

/// `POST /console/policies/{name}/delete`.
pub(super) async fn delete(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
) -> Response {
    const ACTION: &str = "policy.delete";
    if let Some(r) = signed
        .refuse_write(&console, Right::ServiceConfig, ACTION, &name)
        .await
    {
        return r;
    }
    let result = management::delete_policy(&console.app, &name).await;
    signed.audit(&console, ACTION, &name, &result).await;
    match result {
        Ok(()) => {
            signed.flash(&console, format!("Deleted the policy {name}."));
            see_other("/console/policies")
        }
        Err(e) => failure(Some(signed.layout(&console, "policies")), &e),
    }
}
