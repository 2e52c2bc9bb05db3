//! The web console over plain HTTP(S), without a browser: sign-in and the session cookie's flags,
//! CSRF refusal, rights, keys kept out of pages, stale edits, expiry and sign-out. The browser
//! tests (tests/sdk/node/console.test.mjs) drive the same pages through Chromium.

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use usher_server::Limits;
use usher_server::console::ConsoleSettings;

use crate::support::TestServer;

/// A cookie-less HTTP client that does not follow redirects, with the session cookie kept by hand
/// so each test sees exactly what the server sets.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: Option<String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value a `Set-Cookie` gives `name`, if the response sets it.
    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies().iter().find_map(|c| {
            c.split(';')
                .next()
                .and_then(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        })
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        hidden(&self.body, "csrf")
    }
}

/// The value of the first hidden input called `name`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

impl Browser {
    fn new(s: &TestServer) -> Self {
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&s.ca_pem).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            http,
            base: s.raw_url(""),
            session: None,
        }
    }

    async fn send(&self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        self.send_with(method, path, form, &[]).await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        extra_cookies: &[String],
    ) -> Page {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        let mut cookies: Vec<String> = extra_cookies.to_vec();
        if let Some(session) = &self.session {
            cookies.push(format!("__Host-usher-session={session}"));
        }
        if !cookies.is_empty() {
            req = req.header("cookie", cookies.join("; "));
        }
        if let Some(form) = form {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = req.send().await.unwrap();
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, path, Some(form)).await
    }

    /// Signs in through the form; returns the sign-in response.
    async fn sign_in(&mut self, fields: &[(&str, &str)]) -> Page {
        let form = self.get("/console/signin").await;
        assert_eq!(form.status, StatusCode::OK);
        let token = form.cookie("__Host-usher-signin").unwrap();
        let mut fields = fields.to_vec();
        let csrf = form.csrf();
        fields.push(("csrf", &csrf));
        let page = self
            .send_with(
                Method::POST,
                "/console/signin",
                Some(&fields),
                &[format!("__Host-usher-signin={token}")],
            )
            .await;
        if let Some(session) = page.cookie("__Host-usher-session") {
            self.session = Some(session);
        }
        page
    }

    async fn signed_in(s: &TestServer) -> Self {
        let mut b = Self::new(s);
        let key = s.owner_key.to_base64();
        let page = b
            .sign_in(&[("policy", "provisioningserviceowner"), ("key", &key)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        b
    }

    /// The CSRF token of the signed-in session (from the sign-out form every page has).
    async fn csrf(&self) -> String {
        self.get("/console/").await.csrf()
    }
}

/// The audit log's entries as (actor, action, target, result).
async fn audit_log(s: &TestServer) -> Vec<(String, String, String, String)> {
    let (status, _, body) = s.call(Method::GET, "/usher/audit", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap().to_owned();
            (f("actor"), f("action"), f("target"), f("result"))
        })
        .collect()
}

fn entry(
    actor: &str,
    action: &str,
    target: &str,
    result: &str,
) -> (String, String, String, String) {
    (actor.into(), action.into(), target.into(), result.into())
}

fn owner_connection_string(s: &TestServer) -> String {
    format!(
        "HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={}",
        s.owner_key.to_base64()
    )
}

#[tokio::test]
async fn sign_in_sets_a_hardened_server_side_session_cookie() {
    let s = TestServer::start().await;
    let mut b = Browser::new(&s);

    let anonymous = b.get("/console/enrollments").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.location(), "/console/signin");

    let form = b.get("/console/signin").await;
    let signin_cookie = form
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-usher-signin="))
        .unwrap();
    for flag in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=",
    ] {
        assert!(signin_cookie.contains(flag), "{flag} in {signin_cookie}");
    }
    assert_eq!(
        form.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("default-src 'none'")
    );
    assert_eq!(form.headers["cache-control"], "no-store");
    assert_eq!(form.headers["x-frame-options"], "DENY");

    // A wrong key, a wrong host and garbage are refused without a session.
    let wrong = b
        .sign_in(&[
            ("policy", "provisioningserviceowner"),
            (
                "key",
                &usher_proto::SymmetricKey::from_bytes(vec![9; 32])
                    .unwrap()
                    .to_base64(),
            ),
        ])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("The policy name or key is wrong."));
    assert!(wrong.cookie("__Host-usher-session").is_none());
    assert!(
        audit_log(&s).await.contains(&entry(
            "unauthenticated",
            "console.signin",
            "provisioningserviceowner",
            "refused 401002"
        )),
        "a failed sign-in is audited"
    );
    let unknown = b
        .sign_in(&[("policy", "nobody"), ("key", "a2V5a2V5a2V5a2V5a2V5a2V5")])
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(
        unknown.body.contains("The policy name or key is wrong."),
        "an unknown policy reads the same as a wrong key"
    );
    let other_host = b
        .sign_in(&[(
            "connection_string",
            &owner_connection_string(&s).replace("localhost", "elsewhere.example"),
        )])
        .await;
    assert_eq!(other_host.status, StatusCode::UNAUTHORIZED);
    assert!(other_host.body.contains("is for elsewhere.example"));
    assert!(b.session.is_none());

    // The connection string signs in.
    let ok = b
        .sign_in(&[("connection_string", &owner_connection_string(&s))])
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(ok.location(), "/console/");
    let cookie = ok
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-usher-session="))
        .unwrap();
    assert_eq!(
        cookie.split("; ").skip(1).collect::<Vec<_>>(),
        [
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=3600"
        ]
    );
    let value = b.session.clone().unwrap();
    assert_eq!(value.len(), 43, "256 random bits, base64url");
    assert!(!cookie.contains(&s.owner_key.to_base64()));
    assert!(
        ok.cookies()
            .iter()
            .any(|c| c.starts_with("__Host-usher-signin=;") && c.contains("Max-Age=0")),
        "the sign-in token is cleared"
    );

    let overview = b.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains(&s.scope));
    assert!(overview.body.contains(&format!("port {}", s.addr.port())));
    for (what, port) in [("MQTT", s.mqtt_addr.port()), ("AMQP", s.amqp_addr.port())] {
        assert!(overview.body.contains(&format!("{what} on port {port}")));
    }
    // The CA certificate is offered, and is the server's.
    let ca = b.get("/console/ca.pem").await;
    assert_eq!(ca.status, StatusCode::OK);
    assert_eq!(ca.body.as_bytes(), s.ca_pem.as_slice());

    // A made-up session ID opens nothing.
    let forged = Browser {
        session: Some("A".repeat(43)),
        ..Browser::new(&s)
    };
    assert_eq!(forged.get("/console/").await.location(), "/console/signin");
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused() {
    let s = TestServer::start().await;
    let b = Browser::signed_in(&s).await;
    let other = Browser::signed_in(&s).await;
    let csrf = b.csrf().await;
    let theirs = other.csrf().await;
    assert_ne!(csrf, theirs, "each session has its own token");

    let group = |token: Option<&'static str>| {
        let mut form = vec![
            ("kind", "group"),
            ("id", "csrf-group"),
            ("auto_keys", "on"),
            ("provisioning_status", "enabled"),
            ("allocation", "hashed"),
        ];
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        form
    };
    let leak = |t: String| -> &'static str { Box::leak(t.into_boxed_str()) };
    for (token, why) in [
        (None, "no token"),
        (Some("wrong"), "a wrong token"),
        (Some(leak(theirs)), "another session's token"),
    ] {
        let page = b.post("/console/enrollments", &group(token)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{why}");
        assert!(page.body.contains("CSRF"), "{why}: {}", page.body);
        let (status, _, _) = s
            .call(Method::GET, "/enrollmentGroups/csrf-group", None, &[])
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{why}: nothing was written");
    }
    // Sign-out is a form too.
    let page = b.post("/console/signout", &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(b.get("/console/").await.status, StatusCode::OK);

    let page = b
        .post("/console/enrollments", &group(Some(leak(csrf))))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/console/enrollments/group/csrf-group");
    let (status, _, _) = s
        .call(Method::GET, "/enrollmentGroups/csrf-group", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    // The console's write is in the audit log as the API's would be; the refused forms never
    // reached a handler.
    let log = audit_log(&s).await;
    let writes: Vec<_> = log.iter().filter(|e| e.1 != "console.signin").collect();
    assert_eq!(
        writes,
        [&entry(
            "policy:provisioningserviceowner",
            "enrollmentGroup.put",
            "csrf-group",
            "ok"
        )]
    );
    assert_eq!(
        log.iter().filter(|e| e.1 == "console.signin").count(),
        2,
        "both sign-ins are logged"
    );

    // The sign-in form needs its own token (cookie and field must agree).
    let anonymous = Browser::new(&s);
    let key = s.owner_key.to_base64();
    let page = anonymous
        .post(
            "/console/signin",
            &[("policy", "provisioningserviceowner"), ("key", &key)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.cookie("__Host-usher-session").is_none());
    let page = anonymous
        .send_with(
            Method::POST,
            "/console/signin",
            Some(&[
                ("policy", "provisioningserviceowner"),
                ("key", &key),
                ("csrf", "forged"),
            ]),
            &["__Host-usher-signin=other".to_owned()],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn pages_and_actions_follow_the_policys_rights() {
    let s = TestServer::start().await;
    s.enroll_group("rights-group", json!({})).await;
    let (status, _, reader) = s
        .call(
            Method::PUT,
            "/usher/policies/reader",
            Some(json!({"rights": ["EnrollmentRead", "RegistrationStatusRead"]})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut b = Browser::new(&s);
    let page = b
        .sign_in(&[
            ("policy", "reader"),
            ("key", reader["secondaryKey"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);

    let overview = b.get("/console/").await;
    assert!(overview.body.contains("Manage enrollments"));
    assert!(overview.body.contains("Registration records"));
    assert!(!overview.body.contains("Shared access policies"));
    assert!(!overview.body.contains("Linked IoT hubs"));
    assert!(!overview.body.contains("Devices in usher-hub"));

    let list = b.get("/console/enrollments?kind=group").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("rights-group"));
    assert!(!list.body.contains("Add enrollment group"));
    let group = b.get("/console/enrollments/group/rights-group").await;
    assert_eq!(group.status, StatusCode::OK);
    for control in [
        "id=\"edit\"",
        "id=\"disable\"",
        "id=\"delete\"",
        "method=\"post\" action=\"/console/enrollments",
    ] {
        assert!(!group.body.contains(control), "{control} shown to a reader");
    }

    for path in [
        "/console/policies",
        "/console/hubs",
        "/console/hubs/usher-hub/devices",
        "/console/enrollments/new",
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert!(page.body.contains("lacks the"), "{path}: {}", page.body);
    }

    // Forms it has no controls for are refused by the server too, and write nothing.
    let csrf = b.csrf().await;
    let (_, _, stored) = s
        .call(Method::GET, "/enrollmentGroups/rights-group", None, &[])
        .await;
    let etag = stored["etag"].as_str().unwrap().to_owned();
    for (path, form) in [
        (
            "/console/enrollments".to_owned(),
            vec![
                ("kind", "group"),
                ("id", "reader-made"),
                ("auto_keys", "on"),
            ],
        ),
        (
            "/console/enrollments/group/rights-group/delete".to_owned(),
            vec![("etag", etag.as_str())],
        ),
        (
            "/console/enrollments/group/rights-group/status".to_owned(),
            vec![("status", "disabled")],
        ),
        (
            "/console/policies".to_owned(),
            vec![("name", "escalated"), ("rights", "ServiceConfig")],
        ),
        (
            "/console/policies/reader/rotate".to_owned(),
            vec![("which", "primary")],
        ),
    ] {
        let mut form = form.clone();
        form.push(("csrf", &csrf));
        let page = b.post(&path, &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
    }
    assert_eq!(
        s.call(Method::GET, "/enrollmentGroups/reader-made", None, &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, _, kept) = s
        .call(Method::GET, "/enrollmentGroups/rights-group", None, &[])
        .await;
    assert_eq!(kept["provisioningStatus"], json!(null), "not disabled");
    let log = audit_log(&s).await;
    for (action, target) in [
        ("enrollmentGroup.put", "reader-made"),
        ("enrollmentGroup.delete", "rights-group"),
        ("enrollmentGroup.put", "rights-group"),
        ("policy.create", "escalated"),
        ("policy.rotate", "reader"),
    ] {
        assert!(
            log.contains(&entry("policy:reader", action, target, "refused 401003")),
            "{action} {target} refused in the audit log: {log:?}"
        );
    }
    let (_, _, policies) = s.call(Method::GET, "/usher/policies", None, &[]).await;
    assert_eq!(policies.as_array().unwrap().len(), 2, "no policy was added");
    assert_eq!(
        policies
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["keyName"] == "reader")
            .unwrap()["primaryKey"],
        reader["primaryKey"],
        "no key was rotated"
    );

    // The management API refuses the same policy the same way (one authorization check).
    let token = usher_proto::sas::service_token(
        "localhost",
        "reader",
        &usher_proto::SymmetricKey::from_base64(reader["primaryKey"].as_str().unwrap()).unwrap(),
        crate::support::unix_now() + 60,
    );
    let refused = s
        .http
        .put(s.url("/enrollmentGroups/reader-made"))
        .header("authorization", token)
        .json(&json!({"enrollmentGroupId": "reader-made", "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errorCode"], 401_003);
}

#[tokio::test]
async fn keys_stay_out_of_pages_until_asked_for() {
    let s = TestServer::start().await;
    let (primary, secondary) = s.enroll_group("secret-group", json!({})).await;
    let b = Browser::signed_in(&s).await;
    let owner_key = s.owner_key.to_base64();

    let page = b.get("/console/enrollments/group/secret-group").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(&primary) && !page.body.contains(&secondary));
    assert!(page.body.contains("?show=keys"));
    let list = b.get("/console/enrollments?kind=group").await;
    assert!(!list.body.contains(&primary));
    let shown = b
        .get("/console/enrollments/group/secret-group?show=keys")
        .await;
    assert!(shown.body.contains(&primary) && shown.body.contains(&secondary));

    // Deriving a device key reads the group key but shows only the device's.
    let derived = b
        .get("/console/enrollments/group/secret-group?derive=sensor-001")
        .await;
    let expected = usher_proto::SymmetricKey::from_base64(&primary)
        .unwrap()
        .derive_device_key("sensor-001")
        .to_base64();
    assert!(derived.body.contains(&expected));
    assert!(!derived.body.contains(&primary));

    let overview = b.get("/console/").await;
    assert!(!overview.body.contains(&owner_key));
    let overview = b.get("/console/?show=connection-string").await;
    assert!(overview.body.contains(&owner_connection_string(&s)));

    let policies = b.get("/console/policies").await;
    assert!(!policies.body.contains(&owner_key));
    let policies = b
        .get("/console/policies?show=provisioningserviceowner")
        .await;
    assert!(policies.body.contains(&owner_key));
}

#[tokio::test]
async fn a_stale_edit_is_refused_and_the_stored_version_shown() {
    let s = TestServer::start().await;
    let (primary, _) = s.enroll("stale-1", json!({})).await;
    let b = Browser::signed_in(&s).await;

    let form = b.get("/console/enrollments/individual/stale-1/edit").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(!form.body.contains(&primary), "the edit form has no keys");
    let opened_etag = hidden(&form.body, "etag");
    let csrf = form.csrf();

    // Someone else disables it meanwhile.
    let (_, _, current) = s.call(Method::GET, "/enrollments/stale-1", None, &[]).await;
    let mut changed = current.clone();
    changed["provisioningStatus"] = json!("disabled");
    let etag = current["etag"].as_str().unwrap().to_owned();
    let (status, _, _) = s
        .call(
            Method::PUT,
            "/enrollments/stale-1",
            Some(changed),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let edit = [
        ("csrf", csrf.as_str()),
        ("kind", "individual"),
        ("etag", opened_etag.as_str()),
        ("provisioning_status", "enabled"),
        ("allocation", "hashed"),
        ("tags", "{\"site\": \"berlin\"}"),
        ("desired", "{}"),
        ("update_hub_assignment", "on"),
    ];
    let page = b
        .post("/console/enrollments/individual/stale-1/edit", &edit)
        .await;
    assert_eq!(page.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        page.body
            .contains("someone changed this individual enrollment")
    );
    assert!(page.body.contains("The version stored now"));
    assert!(page.body.contains("id=\"current-status\">Disabled"));
    assert!(
        page.body.contains("berlin"),
        "the user's changes are kept in the form"
    );
    let (_, _, stored) = s.call(Method::GET, "/enrollments/stale-1", None, &[]).await;
    assert_eq!(stored["provisioningStatus"], "disabled", "not overwritten");
    assert!(stored.get("initialTwin").is_none());

    // With the current etag the same edit goes through and keeps the keys.
    let fresh = b.get("/console/enrollments/individual/stale-1/edit").await;
    let fresh_etag = hidden(&fresh.body, "etag");
    let mut edit = edit.to_vec();
    edit[2] = ("etag", &fresh_etag);
    let page = b
        .post("/console/enrollments/individual/stale-1/edit", &edit)
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let (_, _, stored) = s
        .call(
            Method::POST,
            "/enrollments/stale-1/attestationmechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(stored["symmetricKey"]["primaryKey"], primary);
    let (_, _, stored) = s.call(Method::GET, "/enrollments/stale-1", None, &[]).await;
    assert_eq!(stored["provisioningStatus"], "enabled");
    assert_eq!(stored["initialTwin"]["tags"]["site"], "berlin");
}

#[tokio::test]
async fn sessions_expire() {
    let s = TestServer::start_with_limits(Limits {
        console: ConsoleSettings {
            enabled: true,
            session_ttl: Duration::from_secs(1),
        },
        ..Limits::default()
    })
    .await;
    let b = Browser::signed_in(&s).await;
    assert_eq!(b.get("/console/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = b.get("/console/").await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER);
    assert_eq!(expired.location(), "/console/signin?why=expired");
    let form = Browser::new(&s).get("/console/signin?why=expired").await;
    assert!(form.body.contains("Your session has expired"));
    // Forms of an expired session go nowhere either.
    let page = b.post("/console/signout", &[("csrf", "x")]).await;
    assert_eq!(page.location(), "/console/signin");
}

#[tokio::test]
async fn sign_out_and_key_rotation_end_sessions() {
    let s = TestServer::start().await;
    let b = Browser::signed_in(&s).await;
    let csrf = b.csrf().await;
    let out = b.post("/console/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/console/signin?why=out");
    assert!(
        out.cookies()
            .iter()
            .any(|c| c.starts_with("__Host-usher-session=;") && c.contains("Max-Age=0"))
    );
    // The server forgot the session: the old cookie opens nothing.
    assert_eq!(b.get("/console/").await.location(), "/console/signin");

    // Rotating the key a session signed in with ends it at once.
    let (_, _, reader) = s
        .call(
            Method::PUT,
            "/usher/policies/rotating",
            Some(json!({"rights": ["EnrollmentRead"]})),
            &[],
        )
        .await;
    let mut b = Browser::new(&s);
    b.sign_in(&[
        ("policy", "rotating"),
        ("key", reader["primaryKey"].as_str().unwrap()),
    ])
    .await;
    assert_eq!(b.get("/console/").await.status, StatusCode::OK);
    let (status, _, _) = s
        .call(
            Method::POST,
            "/usher/policies/rotating/rotate/primary",
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        b.get("/console/").await.location(),
        "/console/signin?why=ended"
    );
}

#[tokio::test]
async fn hubs_are_added_and_reweighted_through_the_console_and_the_api() {
    let s = TestServer::start().await;
    let b = Browser::signed_in(&s).await;
    let csrf = b.csrf().await;
    let page = b
        .post(
            "/console/hubs",
            &[
                ("csrf", &csrf),
                ("name", "hub-two"),
                ("hostname", "hub-two.example"),
                ("weight", "3"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = b
        .post(
            "/console/hubs/usher-hub",
            &[
                ("csrf", &csrf),
                ("weight", "5"),
                ("apply", "on"),
                ("location", "westeurope"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let refused = b
        .post(
            "/console/hubs/usher-hub",
            &[("csrf", &csrf), ("weight", "0")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains("invalid allocation weight 0"),
        "{}",
        refused.body
    );
    let (_, _, hubs) = s.call(Method::GET, "/usher/hubs", None, &[]).await;
    let summary: Vec<_> = hubs
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].clone(),
                h["weight"].clone(),
                h["applyAllocationPolicy"].clone(),
                h["location"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                json!("usher-hub"),
                json!(5),
                json!(true),
                json!("westeurope")
            ),
            (json!("hub-two"), json!(3), json!(false), json!(null)),
        ]
    );
    let (status, _, hub) = s
        .call(
            Method::PATCH,
            "/usher/hubs/hub-two",
            Some(json!({"applyAllocationPolicy": true})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (hub["weight"].clone(), hub["applyAllocationPolicy"].clone()),
        (json!(3), json!(true))
    );
    let (status, _, _) = s
        .call(
            Method::PATCH,
            "/usher/hubs/nope",
            Some(json!({"weight": 2})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn enrollment_lists_page_and_filter_with_the_query_language() {
    let s = TestServer::start().await;
    for batch in 0..3 {
        let groups: Vec<_> = (0..10)
            .map(|i| {
                json!({
                    "enrollmentGroupId": format!("page-{:02}", batch * 10 + i),
                    "attestation": {"type": "symmetricKey"},
                    "provisioningStatus": if i == 3 { "disabled" } else { "enabled" },
                })
            })
            .collect();
        let (status, _, body) = s
            .call(
                Method::POST,
                "/enrollmentGroups",
                Some(json!({"mode": "create", "enrollmentGroups": groups})),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let b = Browser::signed_in(&s).await;
    let rows = |html: &str| {
        html.matches("<a href=\"/console/enrollments/group/page-")
            .count()
    };

    let first = b.get("/console/enrollments?kind=group").await;
    assert_eq!(rows(&first.body), 25);
    assert!(first.body.contains("page-00") && !first.body.contains("page-25"));
    let next = link_of(&first.body, "next-page");
    let second = b.get(&next).await;
    assert_eq!(rows(&second.body), 5);
    assert!(second.body.contains("page-29") && !second.body.contains(">page-00<"));
    assert!(
        !second.body.contains("id=\"next-page\""),
        "the last page has no next link"
    );

    let q = "SELECT * FROM enrollmentGroups WHERE provisioningStatus = 'disabled'";
    let filtered = b
        .get(&format!(
            "/console/enrollments?kind=group&q={}",
            form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(rows(&filtered.body), 3);
    for id in ["page-03", "page-13", "page-23"] {
        assert!(filtered.body.contains(id));
    }
    let bad = b
        .get("/console/enrollments?kind=group&q=SELECT+nonsense")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("invalid query"), "{}", bad.body);
}

/// The `href` of the link with the given id.
fn link_of(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let start = html[..at].rfind("href=\"").unwrap() + "href=\"".len();
    html[start..]
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn policies_are_created_rotated_and_deleted_through_the_console() {
    let s = TestServer::start().await;
    let b = Browser::signed_in(&s).await;
    let csrf = b.csrf().await;
    let created = b
        .post(
            "/console/policies",
            &[
                ("csrf", &csrf),
                ("name", "operator"),
                ("rights", "EnrollmentRead"),
                ("rights", "EnrollmentWrite"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let policy = |list: &serde_json::Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["keyName"] == "operator")
            .cloned()
    };
    let (_, _, list) = s.call(Method::GET, "/usher/policies", None, &[]).await;
    let before = policy(&list).unwrap();
    assert_eq!(before["rights"], "EnrollmentRead, EnrollmentWrite");

    let rotated = b
        .post(
            "/console/policies/operator/rotate",
            &[("csrf", &csrf), ("which", "swap")],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::SEE_OTHER);
    let (_, _, list) = s.call(Method::GET, "/usher/policies", None, &[]).await;
    let after = policy(&list).unwrap();
    assert_eq!(after["primaryKey"], before["secondaryKey"], "swap");
    assert_ne!(after["secondaryKey"], before["secondaryKey"]);

    let confirm = b.get("/console/policies/operator/delete").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Delete the policy operator?"));
    let deleted = b
        .post("/console/policies/operator/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    let (_, _, list) = s.call(Method::GET, "/usher/policies", None, &[]).await;
    assert!(policy(&list).is_none());
    let flash = b.get("/console/policies").await;
    assert!(flash.body.contains("Deleted the policy operator."));

    let owner = b
        .post(
            "/console/policies/provisioningserviceowner/delete",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(owner.status, StatusCode::BAD_REQUEST);
    assert!(owner.body.contains("cannot be deleted"));
}
