//! `usher certificate …`: verified CA certificates, over the management API's
//! `/usher/certificates`.

use std::path::Path;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::manage::{enc, print_json, text};
use super::service_client::ServiceClient;
use crate::cli::CertificateCommand;

pub(super) async fn run(cmd: CertificateCommand) -> anyhow::Result<()> {
    match cmd {
        CertificateCommand::Add {
            name,
            path,
            verified,
            json: as_json,
            login,
        } => {
            let certificate = read(&path)?;
            let client = ServiceClient::connect(&login).await?;
            let route = format!("/usher/certificates/{}", enc(&name));
            let body = json!({"certificate": certificate, "isVerified": verified});
            let mut added = client
                .call(Method::PUT, &route, Some(&body), &[])
                .await?
                .body;
            if !verified {
                added = client
                    .call(
                        Method::POST,
                        &format!("{route}/generateVerificationCode"),
                        None,
                        &[],
                    )
                    .await?
                    .body;
            }
            if as_json {
                return print_json(&added);
            }
            describe(&added);
            if !verified {
                next_step(&name, &added);
            }
            Ok(())
        }
        CertificateCommand::List {
            json: as_json,
            login,
        } => {
            let list = ServiceClient::connect(&login)
                .await?
                .call(Method::GET, "/usher/certificates", None, &[])
                .await?
                .body;
            if as_json {
                return print_json(&list);
            }
            println!(
                "{:<24}{:<10}{:<22}{:<42}SUBJECT",
                "NAME", "VERIFIED", "EXPIRY", "THUMBPRINT"
            );
            for c in list.as_array().into_iter().flatten() {
                let p = &c["properties"];
                println!(
                    "{:<24}{:<10}{:<22}{:<42}{}",
                    text(&c["name"]),
                    text(&p["isVerified"]),
                    text(&p["expiry"]),
                    text(&p["thumbprint"]),
                    text(&p["subject"])
                );
            }
            Ok(())
        }
        CertificateCommand::Show { name, login } => {
            let route = format!("/usher/certificates/{}", enc(&name));
            let shown = ServiceClient::connect(&login)
                .await?
                .call(Method::GET, &route, None, &[])
                .await?
                .body;
            print_json(&shown)
        }
        CertificateCommand::VerificationCode { name, login } => {
            let route = format!(
                "/usher/certificates/{}/generateVerificationCode",
                enc(&name)
            );
            let coded = ServiceClient::connect(&login)
                .await?
                .call(Method::POST, &route, None, &[])
                .await?
                .body;
            next_step(&name, &coded);
            Ok(())
        }
        CertificateCommand::Verify { name, path, login } => {
            let body = json!({"certificate": read(&path)?});
            let route = format!("/usher/certificates/{}/verify", enc(&name));
            let verified = ServiceClient::connect(&login)
                .await?
                .call(Method::POST, &route, Some(&body), &[])
                .await?
                .body;
            describe(&verified);
            Ok(())
        }
        CertificateCommand::Delete { name, etag, login } => {
            let headers: Vec<(&str, String)> = etag.into_iter().map(|e| ("If-Match", e)).collect();
            ServiceClient::connect(&login)
                .await?
                .call(
                    Method::DELETE,
                    &format!("/usher/certificates/{}", enc(&name)),
                    None,
                    &headers,
                )
                .await?;
            println!("Deleted {name}");
            Ok(())
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn describe(c: &Value) {
    let p = &c["properties"];
    println!("Name:        {}", text(&c["name"]));
    println!("Subject:     {}", text(&p["subject"]));
    println!("Thumbprint:  {}", text(&p["thumbprint"]));
    println!("Expiry:      {}", text(&p["expiry"]));
    println!("Verified:    {}", text(&p["isVerified"]));
}

/// The verification code and how to answer it with openssl.
fn next_step(name: &str, coded: &Value) {
    let code = text(&coded["properties"]["verificationCode"]);
    println!("Verification code: {code}");
    println!("Prove you hold the CA's key: sign a certificate whose CN is the code, e.g.");
    println!(
        "  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout proof.key -subj /CN={code} -out proof.csr"
    );
    println!("  openssl x509 -req -in proof.csr -CA ca.pem -CAkey ca.key -days 1 -out proof.pem");
    println!("  usher certificate verify --name {name} --path proof.pem");
}
