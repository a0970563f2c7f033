//! SOAP partner login, `POST /services/Soap/u/NN.N` (and the enterprise `…/Soap/c/NN.N`), as
//! several widely used clients log in only this way. The `loginResponse` elements come in the
//! partner WSDL's order (metadataServerUrl, passwordExpired, sandbox, serverUrl, sessionId, userId,
//! userInfo{… organizationId …}); a failed login is a SOAP fault `sf:INVALID_LOGIN` with HTTP 500.
//! The session id is an ordinary access token: it works for REST, Bulk and Pub/Sub.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/services/Soap/u/{version}", post(login))
        .route("/services/Soap/c/{version}", post(login))
        .route("/services/Soap/u/{version}/{org}", post(login))
        .route("/services/Soap/c/{version}/{org}", post(login))
}

/// Escapes text for XML element content.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn fault(code: &str, message: &str) -> Response {
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {msg}</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{msg}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
        code = esc(code),
        msg = esc(message)
    );
    xml_response(StatusCode::INTERNAL_SERVER_ERROR, body)
}

/// What a login request carries.
#[derive(Debug, Default, PartialEq)]
pub struct LoginRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    /// True when the body has a `login` element in its SOAP body.
    pub is_login: bool,
}

/// Extracts `login/username` and `login/password` whatever the namespace prefixes.
pub fn parse_login(body: &[u8]) -> Result<LoginRequest, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut out = LoginRequest::default();
    let mut current: Option<&'static str> = None;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let name = e.local_name();
                match name.as_ref() {
                    b"login" => out.is_login = true,
                    b"username" if out.is_login => current = Some("username"),
                    b"password" if out.is_login => current = Some("password"),
                    _ => current = None,
                }
            }
            Ok(Event::Text(t)) => {
                if let Some(field) = current {
                    let text = t
                        .decode()
                        .map_err(|e| format!("bad text in <{field}>: {e}"))?;
                    let text = quick_xml::escape::unescape(&text)
                        .map_err(|e| format!("bad escape in <{field}>: {e}"))?
                        .into_owned();
                    // Text may arrive in pieces around entity references: append.
                    let slot = if field == "username" {
                        &mut out.username
                    } else {
                        &mut out.password
                    };
                    slot.get_or_insert_with(String::new).push_str(&text);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                // Entity references inside text (e.g. &amp;) arrive as separate events.
                if let Some(field) = current {
                    let name = r
                        .decode()
                        .map_err(|e| format!("bad reference in <{field}>: {e}"))?;
                    let resolved = match name.as_ref() {
                        "amp" => "&".to_string(),
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        other => match other.strip_prefix('#') {
                            Some(num) => {
                                let code = match num.strip_prefix('x') {
                                    Some(hex) => u32::from_str_radix(hex, 16),
                                    None => num.parse(),
                                }
                                .map_err(|_| {
                                    format!("bad character reference &{other}; in <{field}>")
                                })?;
                                char::from_u32(code)
                                    .ok_or_else(|| {
                                        format!("bad character reference &{other}; in <{field}>")
                                    })?
                                    .to_string()
                            }
                            None => return Err(format!("unknown entity &{other}; in <{field}>")),
                        },
                    };
                    let slot = if field == "username" {
                        &mut out.username
                    } else {
                        &mut out.password
                    };
                    slot.get_or_insert_with(String::new).push_str(&resolved);
                }
            }
            Ok(Event::End(_)) => current = None,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "malformed XML at byte {}: {e}",
                    reader.buffer_position()
                ))
            }
        }
        buf.clear();
    }
    Ok(out)
}

async fn login(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> Response {
    let version = params
        .iter()
        .find(|(k, _)| k == "version")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if !(20..=crate::http::MAX_API_VERSION).contains(&major) {
        return fault(
            "UNSUPPORTED_API_VERSION",
            &format!("Invalid Api version specified on URL: {version}"),
        );
    }
    let req = match parse_login(&body) {
        Ok(r) => r,
        Err(e) => return fault("INVALID_SOAP_REQUEST", &e),
    };
    if !req.is_login {
        return fault(
            "INVALID_OPERATION",
            "this emulator's SOAP endpoint serves login only",
        );
    }
    let (Some(username), Some(password)) = (req.username, req.password) else {
        return fault(
            "INVALID_LOGIN",
            "Invalid username, password, security token; or user locked out.",
        );
    };
    let Some(user) = state.auth.user_by_name(&username).cloned() else {
        return fault(
            "INVALID_LOGIN",
            "Invalid username, password, security token; or user locked out.",
        );
    };
    let full = format!("{}{}", user.password, user.security_token);
    if user.password.is_empty() || (password != full && password != user.password) {
        return fault(
            "INVALID_LOGIN",
            "Invalid username, password, security token; or user locked out.",
        );
    }
    let (session_id, _) = state.auth.issue(user.user_id);
    let org = state.auth.org_id;
    let base = &*state.base_url;
    let timeout_secs = state.config.session_timeout.as_secs();
    let body = format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<soapenv:Body><loginResponse><result>",
            "<metadataServerUrl>{base}/services/Soap/m/{ver}/{org15}</metadataServerUrl>",
            "<passwordExpired>false</passwordExpired>",
            "<sandbox>false</sandbox>",
            "<serverUrl>{base}/services/Soap/u/{ver}/{org15}</serverUrl>",
            "<sessionId>{sid}</sessionId>",
            "<userId>{uid}</userId>",
            "<userInfo>",
            "<accessibilityMode>false</accessibilityMode>",
            "<chatterExternal>false</chatterExternal>",
            "<currencySymbol>$</currencySymbol>",
            "<orgAttachmentFileSizeLimit>5242880</orgAttachmentFileSizeLimit>",
            "<orgDefaultCurrencyIsoCode>USD</orgDefaultCurrencyIsoCode>",
            "<orgDefaultCurrencyLocale>en_US</orgDefaultCurrencyLocale>",
            "<orgDisallowHtmlAttachments>false</orgDisallowHtmlAttachments>",
            "<orgHasPersonAccounts>false</orgHasPersonAccounts>",
            "<organizationId>{org}</organizationId>",
            "<organizationMultiCurrency>false</organizationMultiCurrency>",
            "<organizationName>sfsync Emulator Org</organizationName>",
            "<profileId>00e000000000001AAA</profileId>",
            r#"<roleId xsi:nil="true"/>"#,
            "<sessionSecondsValid>{timeout}</sessionSecondsValid>",
            "<userDefaultCurrencyIsoCode xsi:nil=\"true\"/>",
            "<userEmail>{email}</userEmail>",
            "<userFullName>{name}</userFullName>",
            "<userId>{uid}</userId>",
            "<userLanguage>en_US</userLanguage>",
            "<userLocale>en_US</userLocale>",
            "<userName>{uname}</userName>",
            "<userTimeZone>Etc/UTC</userTimeZone>",
            "<userType>Standard</userType>",
            "<userUiSkin>Theme3</userUiSkin>",
            "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"
        ),
        base = esc(base),
        ver = esc(&version),
        org15 = org.short(),
        org = org,
        sid = esc(&session_id),
        uid = user.user_id,
        timeout = timeout_secs,
        email = esc(&user.email),
        name = esc(&user.full_name),
        uname = esc(&user.username),
    );
    xml_response(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_request_is_parsed_whatever_the_prefixes() {
        let body = br#"<?xml version="1.0"?><env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"><env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>a@b.c</n1:username><n1:password>p&amp;wTOKEN</n1:password></n1:login></env:Body></env:Envelope>"#;
        let r = parse_login(body).unwrap();
        assert!(r.is_login);
        assert_eq!(r.username.as_deref(), Some("a@b.c"));
        assert_eq!(r.password.as_deref(), Some("p&wTOKEN"));
    }

    #[test]
    fn malformed_xml_says_where() {
        let e = parse_login(b"<a><login><username>x</password></login>").unwrap_err();
        assert!(e.contains("malformed XML at byte"), "{e}");
    }
}
