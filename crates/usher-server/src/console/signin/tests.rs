use super::*;

#[test]
fn connection_strings() {
    assert_eq!(
        parse_connection_string(
            "HostName=localhost;SharedAccessKeyName=owner;SharedAccessKey=YWJj=="
        ),
        Ok(Credentials {
            policy: "owner".into(),
            key: "YWJj==".into(),
            host: Some("localhost".into()),
        })
    );
    assert_eq!(
        parse_connection_string(" sharedaccesskey=k ; SHAREDACCESSKEYNAME=p ;"),
        Ok(Credentials {
            policy: "p".into(),
            key: "k".into(),
            host: None,
        })
    );
    assert!(parse_connection_string("HostName=x;SharedAccessKeyName=p").is_err());
    assert!(parse_connection_string("garbage").is_err());
}
