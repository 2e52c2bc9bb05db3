use super::*;

#[tokio::test(start_paused = true)]
async fn sessions_expire_and_sign_out() {
    let sessions = Sessions::new(Duration::from_secs(60));
    let id = sessions.create("reader", [7; 32]).unwrap();
    let s = sessions.get(Some(&id)).unwrap();
    assert_eq!(s.policy, "reader");
    assert_eq!(s.csrf.len(), 43);
    assert_eq!(sessions.get(Some("nope")).unwrap_err(), Lookup::Unknown);
    assert_eq!(sessions.get(None).unwrap_err(), Lookup::Unknown);

    sessions.set_flash(&id, "done".into());
    assert_eq!(sessions.take_flash(&id).as_deref(), Some("done"));
    assert_eq!(sessions.take_flash(&id), None);

    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(sessions.get(Some(&id)).unwrap_err(), Lookup::Expired);
    assert_eq!(
        sessions.get(Some(&id)).unwrap_err(),
        Lookup::Unknown,
        "an expired session is forgotten"
    );

    let id = sessions.create("reader", [7; 32]).unwrap();
    sessions.remove(&id);
    assert_eq!(sessions.get(Some(&id)).unwrap_err(), Lookup::Unknown);
}

#[test]
fn tokens_and_cookies() {
    assert!(same_token("abc", "abc"));
    assert!(!same_token("abc", "abd"));
    assert!(!same_token("abc", "abcd"));
    assert_ne!(random_token().unwrap(), random_token().unwrap());
    let mut headers = axum::http::HeaderMap::new();
    headers.append("cookie", "a=1; __Host-usher-session=xyz".parse().unwrap());
    headers.append("cookie", "b=2".parse().unwrap());
    assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
    assert_eq!(cookie(&headers, "b"), Some("2"));
    assert_eq!(cookie(&headers, "c"), None);
    let c = set_cookie(SESSION_COOKIE, "v", Duration::from_secs(5));
    assert_eq!(
        c,
        "__Host-usher-session=v; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=5"
    );
}
