//! Outbound Messages: the SOAP 1.1 `notifications` message Salesforce POSTs to a listener when a
//! workflow rule or flow fires a "Send Outbound Message" action, and the `notificationsResponse`
//! (`<Ack>true</Ack>`) or SOAP fault the listener answers with.
//!
//! Guarantees: [`parse_notifications`] reads untrusted bytes and never fetches, declares or
//! expands anything — a DOCTYPE is refused outright (so there is no DTD, no external entity and
//! no entity expansion), only the five predefined entities and character references are
//! resolved, and nesting depth, element count, notification count and field count are bounded.
//! Every error names the place (element path and byte offset) and the reason. A problem inside one
//! `Notification` (no Id, no `sObject`, a malformed record) is reported for that notification
//! alone ([`OutboundMessage::rejected`]), so the others of the message stay usable. The session
//! id a message may carry is never kept.

use std::fmt;

use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use quick_xml::NsReader;

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The SOAP 1.2 envelope namespace (refused: Outbound Messages use SOAP 1.1).
const SOAP12_ENV_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// The namespace of `notifications` and its children.
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
/// The namespace of the `sObject` fields (`sf:` in Salesforce's messages).
pub const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
/// XML Schema instance (`xsi:type`, `xsi:nil`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Salesforce sends at most this many notifications in one message.
pub const MAX_NOTIFICATIONS: usize = 100;
/// Fields of one `sObject` at most (an object has at most 800 fields; some slack).
pub const MAX_FIELDS: usize = 1_000;
/// Nesting depth at most (a notification's field value sits at depth 6).
const MAX_DEPTH: usize = 12;
/// Elements of one message at most (100 notifications × 1,000 fields and some).
const MAX_ELEMENTS: usize = 110_000;

/// Where and why a message or a notification could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct OutboundError {
    /// Element path, e.g. `Envelope/Body/notifications/Notification[3]/sObject/Name`; empty
    /// before the first element.
    pub path: String,
    /// Byte offset in the message.
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "at byte {}: {}", self.offset, self.reason)
        } else {
            write!(f, "{} (byte {}): {}", self.path, self.offset, self.reason)
        }
    }
}

/// One readable notification: a record's field values as the message carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// 1-based position in the message.
    pub index: usize,
    /// The notification id (`04l…`): the same on every redelivery of this notification.
    pub id: String,
    /// The object, from the `sObject`'s `xsi:type` (`sf:Account` → `Account`).
    pub object: String,
    /// The record id (`sObject/Id`).
    pub record_id: String,
    /// The other fields in message order: (API name, text), `None` for `xsi:nil="true"`.
    pub fields: Vec<(String, Option<String>)>,
}

impl Notification {
    /// The text of `field` (case-insensitive API name): `None` when absent, `Some(None)` when nil.
    pub fn field(&self, field: &str) -> Option<Option<&str>> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(field))
            .map(|(_, v)| v.as_deref())
    }
}

/// A notification that could not be read, with what was read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedNotification {
    /// 1-based position in the message.
    pub index: usize,
    pub id: Option<String>,
    pub object: Option<String>,
    pub record_id: Option<String>,
    pub error: OutboundError,
}

/// A parsed `notifications` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub organization_id: String,
    /// The Outbound Message definition (`04k…`).
    pub action_id: String,
    /// Whether the message carried a session id (its value is never kept).
    pub has_session_id: bool,
    pub enterprise_url: Option<String>,
    pub partner_url: Option<String>,
    /// Readable notifications, in message order.
    pub notifications: Vec<Notification>,
    /// Notifications that could not be read, in message order.
    pub rejected: Vec<RejectedNotification>,
}

/// Whether `s` has the shape of a Salesforce id: 15 or 18 ASCII letters and digits.
pub fn is_salesforce_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether two Salesforce ids name the same thing: equal 15-character (case-sensitive) prefixes
/// (the 18-character form adds a case-insensitive checksum suffix).
pub fn same_salesforce_id(a: &str, b: &str) -> bool {
    is_salesforce_id(a) && is_salesforce_id(b) && a[..15] == b[..15]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    SoapEnv,
    Soap12,
    Outbound,
    Other,
    None,
}

fn ns_of(r: &ResolveResult<'_>) -> Result<Ns, Vec<u8>> {
    Ok(match r {
        ResolveResult::Bound(n) => match n.as_ref() {
            x if x == SOAP_ENV_NS.as_bytes() => Ns::SoapEnv,
            x if x == SOAP12_ENV_NS.as_bytes() => Ns::Soap12,
            x if x == OUTBOUND_NS.as_bytes() => Ns::Outbound,
            _ => Ns::Other,
        },
        ResolveResult::Unbound => Ns::None,
        ResolveResult::Unknown(p) => return Err(p.clone()),
    })
}

/// What the element being read is (by its position in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Envelope,
    Header,
    /// Anything inside the Header (ignored).
    Ignored,
    Body,
    Notifications,
    /// A text child of `notifications` (OrganizationId, ActionId, …).
    MessageValue(MessageField),
    /// A child of `notifications` sfsync does not know (skipped).
    UnknownValue,
    Notification,
    NotificationId,
    SObject,
    Field,
    /// Inside a field (not allowed; the notification is rejected).
    Nested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageField {
    OrganizationId,
    ActionId,
    SessionId,
    EnterpriseUrl,
    PartnerUrl,
}

struct Frame {
    role: Role,
    /// Path segment (`Notification[3]`, `sObject`, `Name`).
    segment: String,
    /// Text collected (leaf elements only).
    text: String,
    /// `xsi:nil="true"`.
    nil: bool,
}

/// A notification being read.
#[derive(Default)]
struct Partial {
    index: usize,
    id: Option<String>,
    object: Option<String>,
    record_id: Option<String>,
    fields: Vec<(String, Option<String>)>,
    saw_sobject: bool,
    problem: Option<OutboundError>,
}

struct Parser {
    stack: Vec<Frame>,
    elements: usize,
    org: Option<String>,
    action: Option<String>,
    has_session_id: bool,
    enterprise_url: Option<String>,
    partner_url: Option<String>,
    saw_notifications: bool,
    saw_body: bool,
    root_done: bool,
    notification_count: usize,
    current: Option<Partial>,
    notifications: Vec<Notification>,
    rejected: Vec<RejectedNotification>,
}

impl Parser {
    fn path(&self) -> String {
        self.stack
            .iter()
            .map(|f| f.segment.as_str())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn err(&self, offset: u64, reason: impl Into<String>) -> OutboundError {
        OutboundError {
            path: self.path(),
            offset,
            reason: reason.into(),
        }
    }

    /// Marks the notification being read as rejected (the first problem wins).
    fn reject(&mut self, offset: u64, reason: impl Into<String>) {
        let e = self.err(offset, reason);
        if let Some(p) = self.current.as_mut() {
            if p.problem.is_none() {
                p.problem = Some(e);
            }
        }
    }

    /// The role of a new element under the current one; an error ends the whole message.
    fn role_of(
        &mut self,
        ns: Ns,
        local: &str,
        offset: u64,
    ) -> Result<(Role, String), OutboundError> {
        let parent = self.stack.last().map(|f| f.role);
        let seg = local.to_string();
        let role = match parent {
            None => {
                if self.root_done {
                    return Err(self.err(offset, "content after the SOAP envelope"));
                }
                match (ns, local) {
                    (Ns::SoapEnv, "Envelope") => Role::Envelope,
                    (Ns::Soap12, "Envelope") => {
                        return Err(self.err(
                            offset,
                            "a SOAP 1.2 envelope; Outbound Messages are SOAP 1.1 \
                             (namespace http://schemas.xmlsoap.org/soap/envelope/)",
                        ))
                    }
                    _ => {
                        return Err(self.err(
                            offset,
                            format!(
                                "the root element is <{local}>, not a SOAP 1.1 Envelope \
                                 (namespace {SOAP_ENV_NS})"
                            ),
                        ))
                    }
                }
            }
            Some(Role::Envelope) => match (ns, local) {
                (Ns::SoapEnv, "Header") if !self.saw_body => Role::Header,
                (Ns::SoapEnv, "Body") if !self.saw_body => {
                    self.saw_body = true;
                    Role::Body
                }
                (Ns::SoapEnv, "Body") => {
                    return Err(self.err(offset, "a second SOAP Body"));
                }
                _ => {
                    return Err(self.err(
                        offset,
                        format!("unexpected <{local}> in the envelope (expected Header or Body)"),
                    ))
                }
            },
            Some(Role::Header) | Some(Role::Ignored) => Role::Ignored,
            Some(Role::Body) => match (ns, local) {
                (Ns::Outbound, "notifications") if !self.saw_notifications => {
                    self.saw_notifications = true;
                    Role::Notifications
                }
                (Ns::Outbound, "notifications") => {
                    return Err(self.err(offset, "a second notifications element"))
                }
                (_, "notifications") => {
                    return Err(self.err(
                        offset,
                        format!("<notifications> is not in the namespace {OUTBOUND_NS}"),
                    ))
                }
                _ => {
                    return Err(self.err(
                        offset,
                        format!(
                            "unexpected <{local}> in the SOAP Body (expected notifications; \
                             is this an Outbound Message?)"
                        ),
                    ))
                }
            },
            Some(Role::Notifications) => {
                let field = match local {
                    "OrganizationId" => Some(MessageField::OrganizationId),
                    "ActionId" => Some(MessageField::ActionId),
                    "SessionId" => Some(MessageField::SessionId),
                    "EnterpriseUrl" => Some(MessageField::EnterpriseUrl),
                    "PartnerUrl" => Some(MessageField::PartnerUrl),
                    _ => None,
                };
                match (field, local) {
                    (Some(f), _) => Role::MessageValue(f),
                    (None, "Notification") => {
                        self.notification_count += 1;
                        if self.notification_count > MAX_NOTIFICATIONS {
                            return Err(self.err(
                                offset,
                                format!(
                                    "more than {MAX_NOTIFICATIONS} notifications in one message \
                                     (Salesforce sends at most {MAX_NOTIFICATIONS})"
                                ),
                            ));
                        }
                        self.current = Some(Partial {
                            index: self.notification_count,
                            ..Default::default()
                        });
                        return Ok((
                            Role::Notification,
                            format!("Notification[{}]", self.notification_count),
                        ));
                    }
                    _ => Role::UnknownValue,
                }
            }
            Some(Role::MessageValue(_)) | Some(Role::NotificationId) => {
                return Err(self.err(
                    offset,
                    format!("unexpected element <{local}> inside a text value"),
                ))
            }
            Some(Role::UnknownValue) => Role::UnknownValue,
            Some(Role::Notification) => match local {
                "Id" => Role::NotificationId,
                "sObject" => {
                    let saw = self.current.as_ref().is_some_and(|p| p.saw_sobject);
                    if saw {
                        self.reject(offset, "a second sObject in one notification");
                    }
                    if let Some(p) = self.current.as_mut() {
                        p.saw_sobject = true;
                    }
                    Role::SObject
                }
                other => {
                    self.reject(
                        offset,
                        format!("unexpected <{other}> in a Notification (expected Id and sObject)"),
                    );
                    Role::Nested
                }
            },
            Some(Role::SObject) => {
                let n = self.current.as_ref().map_or(0, |p| p.fields.len());
                if n >= MAX_FIELDS {
                    self.reject(
                        offset,
                        format!("more than {MAX_FIELDS} fields in one sObject"),
                    );
                }
                Role::Field
            }
            Some(Role::Field) => {
                self.reject(
                    offset,
                    format!("field has a child element <{local}>; field values are text"),
                );
                Role::Nested
            }
            Some(Role::Nested) => Role::Nested,
        };
        Ok((role, seg))
    }
}

/// Reads an Outbound Message. `Err` when the message as a whole cannot be read (not XML, not a
/// SOAP 1.1 `notifications` message, a DOCTYPE, a limit exceeded, no OrganizationId or
/// ActionId, no notification); problems of single notifications are in
/// [`OutboundMessage::rejected`].
pub fn parse_notifications(body: &[u8]) -> Result<OutboundMessage, OutboundError> {
    let mut reader = NsReader::from_reader(body);
    {
        let c = reader.config_mut();
        c.expand_empty_elements = true;
        c.check_end_names = true;
        c.trim_text(false);
    }
    let mut p = Parser {
        stack: Vec::new(),
        elements: 0,
        org: None,
        action: None,
        has_session_id: false,
        enterprise_url: None,
        partner_url: None,
        saw_notifications: false,
        saw_body: false,
        root_done: false,
        notification_count: 0,
        current: None,
        notifications: Vec::new(),
        rejected: Vec::new(),
    };
    loop {
        let before = reader.buffer_position();
        let read = reader
            .read_resolved_event()
            .map(|(ns, ev)| (ns_of(&ns), ev));
        let (ns, event) = match read {
            Ok(x) => x,
            Err(e) => return Err(p.err(reader.error_position(), format!("malformed XML: {e}"))),
        };
        match event {
            Event::Decl(d) => {
                if let Some(enc) = d.encoding() {
                    let enc =
                        enc.map_err(|e| p.err(before, format!("bad XML declaration: {e}")))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(p.err(
                            before,
                            format!(
                                "encoding \"{}\" is not supported (UTF-8 only)",
                                String::from_utf8_lossy(&enc)
                            ),
                        ));
                    }
                }
            }
            Event::DocType(_) => {
                return Err(p.err(
                    before,
                    "a DOCTYPE is not allowed (no DTDs, so no entity declarations or external \
                     entities)",
                ))
            }
            Event::PI(_) => {
                return Err(p.err(before, "processing instructions are not allowed"));
            }
            Event::Comment(_) => {}
            Event::Start(e) => {
                p.elements += 1;
                if p.elements > MAX_ELEMENTS {
                    return Err(p.err(
                        before,
                        format!("more than {MAX_ELEMENTS} elements in one message"),
                    ));
                }
                if p.stack.len() >= MAX_DEPTH {
                    return Err(p.err(before, format!("nesting deeper than {MAX_DEPTH}")));
                }
                let ns = ns.map_err(|prefix| {
                    p.err(
                        before,
                        format!(
                            "undeclared namespace prefix '{}'",
                            String::from_utf8_lossy(&prefix)
                        ),
                    )
                })?;
                let local = std::str::from_utf8(e.local_name().as_ref())
                    .map_err(|_| p.err(before, "element name is not UTF-8"))?
                    .to_string();
                // Attributes: xsi:type on sObject, xsi:nil on values; others ignored.
                let mut xsi_type: Option<String> = None;
                let mut nil = false;
                for a in e.attributes() {
                    let a = a.map_err(|err| p.err(before, format!("bad attribute: {err}")))?;
                    let (ans, alocal) = reader.resolve_attribute(a.key);
                    let is_xsi =
                        matches!(&ans, ResolveResult::Bound(n) if n.as_ref() == XSI_NS.as_bytes());
                    if !is_xsi {
                        continue;
                    }
                    let value = a
                        .decode_and_unescape_value(reader.decoder())
                        .map_err(|err| p.err(before, format!("bad attribute value: {err}")))?
                        .trim()
                        .to_string();
                    match alocal.as_ref() {
                        b"type" => xsi_type = Some(value),
                        b"nil" => nil = value == "true" || value == "1",
                        _ => {}
                    }
                }
                let (role, segment) = p.role_of(ns, &local, before)?;
                p.stack.push(Frame {
                    role,
                    segment,
                    text: String::new(),
                    nil,
                });
                if role == Role::SObject {
                    match xsi_type {
                        None => p.reject(before, "sObject has no xsi:type (e.g. sf:Account)"),
                        Some(t) => {
                            let (tns, tlocal) = reader.resolve_element(QName(t.as_bytes()));
                            if let ResolveResult::Unknown(prefix) = tns {
                                let prefix = String::from_utf8_lossy(&prefix).into_owned();
                                p.reject(
                                    before,
                                    format!(
                                        "xsi:type \"{t}\" uses the undeclared prefix '{prefix}'"
                                    ),
                                );
                            } else {
                                let object = String::from_utf8_lossy(tlocal.as_ref()).into_owned();
                                if object.is_empty()
                                    || !object
                                        .bytes()
                                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                                {
                                    p.reject(
                                        before,
                                        format!("xsi:type \"{t}\" does not name an object"),
                                    );
                                } else if let Some(c) = p.current.as_mut() {
                                    c.object = Some(object);
                                }
                            }
                        }
                    }
                }
            }
            Event::End(_) => {
                let Some(frame) = p.stack.pop() else {
                    return Err(p.err(before, "an end tag without a start tag"));
                };
                let here = {
                    let mut s = p.path();
                    if !s.is_empty() {
                        s.push('/');
                    }
                    s.push_str(&frame.segment);
                    s
                };
                let at = |reason: String| OutboundError {
                    path: here.clone(),
                    offset: before,
                    reason,
                };
                let text = frame.text;
                match frame.role {
                    Role::Envelope => p.root_done = true,
                    Role::MessageValue(f) => {
                        let v = text.trim().to_string();
                        let value = (!frame.nil && !v.is_empty()).then_some(v);
                        let slot = match f {
                            MessageField::OrganizationId => &mut p.org,
                            MessageField::ActionId => &mut p.action,
                            MessageField::SessionId => {
                                p.has_session_id = value.is_some();
                                continue;
                            }
                            MessageField::EnterpriseUrl => &mut p.enterprise_url,
                            MessageField::PartnerUrl => &mut p.partner_url,
                        };
                        if slot.is_some() {
                            return Err(at("given twice".into()));
                        }
                        *slot = value;
                    }
                    Role::NotificationId => {
                        let v = text.trim().to_string();
                        let problem = if !is_salesforce_id(&v) {
                            Some(at(format!(
                                "notification Id \"{}\" is not a Salesforce id (15 or 18 letters \
                                 and digits)",
                                truncate(&v)
                            )))
                        } else if p.current.as_ref().is_some_and(|c| c.id.is_some()) {
                            Some(at("a second Id in one notification".into()))
                        } else {
                            None
                        };
                        if let Some(c) = p.current.as_mut() {
                            match problem {
                                Some(e) => {
                                    c.problem.get_or_insert(e);
                                }
                                None => c.id = Some(v),
                            }
                        }
                    }
                    Role::Field => {
                        let name = frame.segment;
                        let value = if frame.nil { None } else { Some(text) };
                        let Some(c) = p.current.as_mut() else {
                            continue;
                        };
                        let problem = if name == "Id" {
                            let v = value.as_deref().unwrap_or("").trim().to_string();
                            if !is_salesforce_id(&v) {
                                Some(at(format!(
                                    "record Id \"{}\" is not a Salesforce id",
                                    truncate(&v)
                                )))
                            } else if c.record_id.is_some() {
                                Some(at("Id given twice".into()))
                            } else {
                                c.record_id = Some(v);
                                None
                            }
                        } else if c.fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                            Some(at(format!("field {name} given twice")))
                        } else {
                            c.fields.push((name, value));
                            None
                        };
                        if let Some(e) = problem {
                            c.problem.get_or_insert(e);
                        }
                    }
                    Role::Notification => {
                        if let Some(c) = p.current.take() {
                            finish_notification(c, here.clone(), before, &mut p);
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| p.err(before, format!("text is not UTF-8: {e}")))?;
                push_text(&mut p, &text, before)?;
            }
            Event::CData(t) => {
                let text = t
                    .decode()
                    .map_err(|e| p.err(before, format!("CDATA is not UTF-8: {e}")))?;
                push_text(&mut p, &text, before)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r
                            .decode()
                            .map_err(|e| p.err(before, format!("bad reference: {e}")))?;
                        match name.as_ref() {
                            "amp" => "&".into(),
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            other => {
                                return Err(p.err(
                                    before,
                                    format!(
                                        "unknown entity &{}; (only the predefined XML entities \
                                         are allowed)",
                                        truncate(other)
                                    ),
                                ))
                            }
                        }
                    }
                    Err(e) => {
                        return Err(p.err(before, format!("bad character reference: {e}")));
                    }
                };
                push_text(&mut p, &resolved, before)?;
            }
            // `expand_empty_elements` turns `<a/>` into Start + End.
            Event::Empty(_) => {
                return Err(p.err(before, "unexpected empty-element event"));
            }
            Event::Eof => break,
        }
    }
    let end = reader.buffer_position();
    if !p.stack.is_empty() {
        return Err(p.err(end, "the message ends inside an element"));
    }
    if !p.root_done {
        return Err(p.err(end, "no SOAP envelope"));
    }
    if !p.saw_notifications {
        return Err(OutboundError {
            path: "Envelope/Body".into(),
            offset: end,
            reason: format!("no notifications element (namespace {OUTBOUND_NS})"),
        });
    }
    let missing = |what: &str| OutboundError {
        path: "Envelope/Body/notifications".into(),
        offset: end,
        reason: format!("no {what}"),
    };
    let org = p.org.ok_or_else(|| missing("OrganizationId"))?;
    let action = p.action.ok_or_else(|| missing("ActionId"))?;
    for (what, v) in [("OrganizationId", &org), ("ActionId", &action)] {
        if !is_salesforce_id(v) {
            return Err(OutboundError {
                path: format!("Envelope/Body/notifications/{what}"),
                offset: end,
                reason: format!("\"{}\" is not a Salesforce id", truncate(v)),
            });
        }
    }
    if p.notification_count == 0 {
        return Err(missing("Notification"));
    }
    Ok(OutboundMessage {
        organization_id: org,
        action_id: action,
        has_session_id: p.has_session_id,
        enterprise_url: p.enterprise_url,
        partner_url: p.partner_url,
        notifications: p.notifications,
        rejected: p.rejected,
    })
}

fn finish_notification(c: Partial, path: String, offset: u64, p: &mut Parser) {
    let problem = c.problem.or_else(|| {
        let why = if c.id.is_none() {
            Some("no notification Id")
        } else if !c.saw_sobject {
            Some("no sObject")
        } else if c.record_id.is_none() {
            Some("the sObject has no Id")
        } else if c.object.is_none() {
            Some("the sObject has no xsi:type")
        } else {
            None
        };
        why.map(|w| OutboundError {
            path: path.clone(),
            offset,
            reason: w.into(),
        })
    });
    match (problem, c.id, c.object, c.record_id) {
        (None, Some(id), Some(object), Some(record_id)) => p.notifications.push(Notification {
            index: c.index,
            id,
            object,
            record_id,
            fields: c.fields,
        }),
        (problem, id, object, record_id) => p.rejected.push(RejectedNotification {
            index: c.index,
            id,
            object,
            record_id,
            error: problem.unwrap_or(OutboundError {
                path,
                offset,
                reason: "incomplete notification".into(),
            }),
        }),
    }
}

/// Adds text to the element being read: leaf values keep it; containers accept whitespace only.
fn push_text(p: &mut Parser, text: &str, offset: u64) -> Result<(), OutboundError> {
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(p.err(
            offset,
            format!("control character U+{:04X} is not allowed in XML", c as u32),
        ));
    }
    let Some(frame) = p.stack.last_mut() else {
        if text.trim().is_empty() {
            return Ok(());
        }
        return Err(p.err(offset, "text outside the SOAP envelope"));
    };
    match frame.role {
        Role::MessageValue(_) | Role::NotificationId | Role::Field => {
            frame.text.push_str(text);
            Ok(())
        }
        Role::Ignored | Role::UnknownValue | Role::Nested => Ok(()),
        _ if text.trim().is_empty() => Ok(()),
        _ => Err(p.err(offset, "unexpected text between elements")),
    }
}

/// At most 64 characters of untrusted text, for messages.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    }
}

/// Escapes text for XML element content (quotes stay as they are, so faults read plainly).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&format!("&#x{:X};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The `Content-Type` of answers (and of Salesforce's messages).
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// The acknowledgement: `<notificationsResponse><Ack>true</Ack></notificationsResponse>`.
/// Salesforce removes the message from its queue only on `Ack` true.
pub fn ack_response(ack: bool) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body><notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>{ack}</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
    )
}

/// Who a fault blames: the sender's message (`soapenv:Client`) or the receiver
/// (`soapenv:Server`, e.g. the store is unavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    Client,
    Server,
}

/// A SOAP 1.1 fault. Salesforce treats it as "not acknowledged" and retries the message.
pub fn fault_response(code: FaultCode, message: &str) -> String {
    let code = match code {
        FaultCode::Client => "soapenv:Client",
        FaultCode::Server => "soapenv:Server",
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
        xml_escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as Salesforce sends it (shape from the Outbound Message WSDL).
    fn message(notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D000000000062EAA</OrganizationId>
   <ActionId>04k000000000004AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/66.0/00D000000000062</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/66.0/00D000000000062</PartnerUrl>
{notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    fn notification(id: &str, record: &str, extra: &str) -> String {
        format!(
            r#"   <Notification>
    <Id>{id}</Id>
    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{record}</sf:Id>
     <sf:Name>Acme &amp; Sons</sf:Name>
     <sf:Phone xsi:nil="true"/>
     <sf:SystemModstamp>2026-01-02T03:04:05.000Z</sf:SystemModstamp>{extra}
    </sObject>
   </Notification>"#
        )
    }

    #[test]
    fn reads_a_salesforce_message() {
        let body = message(&format!(
            "{}\n{}",
            notification("04l000000000001AAA", "001000000000001AAA", ""),
            notification(
                "04l000000000002AAA",
                "001000000000002AAA",
                "<sf:Description><![CDATA[a <b>bold</b> claim]]> &#x263A;</sf:Description>"
            )
        ));
        let m = parse_notifications(body.as_bytes()).unwrap();
        assert_eq!(m.organization_id, "00D000000000062EAA");
        assert_eq!(m.action_id, "04k000000000004AAA");
        assert!(!m.has_session_id);
        assert!(m.rejected.is_empty(), "{:?}", m.rejected);
        assert_eq!(m.notifications.len(), 2);
        let n = &m.notifications[0];
        assert_eq!(
            (
                n.index,
                n.id.as_str(),
                n.object.as_str(),
                n.record_id.as_str()
            ),
            (1, "04l000000000001AAA", "Account", "001000000000001AAA")
        );
        assert_eq!(n.field("Name"), Some(Some("Acme & Sons")));
        assert_eq!(n.field("Phone"), Some(None));
        assert_eq!(n.field("Fax"), None);
        assert_eq!(
            n.field("SystemModstamp"),
            Some(Some("2026-01-02T03:04:05.000Z"))
        );
        assert_eq!(
            m.notifications[1].field("Description"),
            Some(Some("a <b>bold</b> claim \u{263A}"))
        );
    }

    #[test]
    fn a_session_id_is_noticed_but_never_kept() {
        let body = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace(
            r#"<SessionId xsi:nil="true"/>"#,
            "<SessionId>00Dxx!AQ0AQSECRET</SessionId>",
        );
        let m = parse_notifications(body.as_bytes()).unwrap();
        assert!(m.has_session_id);
        assert!(!format!("{m:?}").contains("SECRET"));
    }

    #[test]
    fn one_bad_notification_leaves_the_others() {
        let bad_id = notification("not-an-id", "001000000000002AAA", "");
        let no_type = notification("04l000000000003AAA", "001000000000003AAA", "")
            .replace(r#" xsi:type="sf:Account""#, "");
        let nested = notification(
            "04l000000000004AAA",
            "001000000000004AAA",
            "<sf:Owner><sf:Name>x</sf:Name></sf:Owner>",
        );
        let body = message(&format!(
            "{}\n{bad_id}\n{no_type}\n{nested}",
            notification("04l000000000001AAA", "001000000000001AAA", "")
        ));
        let m = parse_notifications(body.as_bytes()).unwrap();
        assert_eq!(m.notifications.len(), 1);
        assert_eq!(m.rejected.len(), 3);
        let r = &m.rejected[0];
        assert_eq!(r.index, 2);
        assert_eq!(
            r.error.path,
            "Envelope/Body/notifications/Notification[2]/Id"
        );
        assert!(
            r.error.reason.contains("not a Salesforce id"),
            "{}",
            r.error
        );
        assert!(m.rejected[1].error.reason.contains("xsi:type"));
        assert_eq!(m.rejected[1].id.as_deref(), Some("04l000000000003AAA"));
        assert!(m.rejected[2].error.reason.contains("child element"));
        assert!(m.rejected[2]
            .error
            .path
            .ends_with("Notification[4]/sObject/Owner"));
    }

    #[test]
    fn hostile_input_is_refused_with_the_place() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&xxe;</soapenv:Body></soapenv:Envelope>"#;
        let e = parse_notifications(xxe.as_bytes()).unwrap_err();
        assert!(e.reason.contains("DOCTYPE"), "{e}");

        let lol = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace("Acme &amp; Sons", "&lol9;");
        let e = parse_notifications(lol.as_bytes()).unwrap_err();
        assert!(e.reason.contains("unknown entity &lol9;"), "{e}");
        assert!(e.path.ends_with("Notification[1]/sObject/Name"), "{e}");

        let e = parse_notifications(b"not xml at all").unwrap_err();
        assert!(
            e.reason.contains("no SOAP envelope") || e.reason.contains("text"),
            "{e}"
        );

        let e = parse_notifications(b"<a><b></a>").unwrap_err();
        assert!(
            e.reason.contains("malformed XML") || e.reason.contains("root"),
            "{e}"
        );

        let truncated = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ));
        let e = parse_notifications(&truncated.as_bytes()[..truncated.len() / 2]).unwrap_err();
        assert!(!e.reason.is_empty());

        let deep = format!(
            "{}{}",
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Header>",
            "<x>".repeat(50)
        );
        let e = parse_notifications(deep.as_bytes()).unwrap_err();
        assert!(e.reason.contains("nesting deeper"), "{e}");

        let soap12 = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>"#;
        let e = parse_notifications(soap12.as_bytes()).unwrap_err();
        assert!(e.reason.contains("SOAP 1.2"), "{e}");

        let latin1 = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace("encoding=\"UTF-8\"", "encoding=\"ISO-8859-1\"");
        let e = parse_notifications(latin1.as_bytes()).unwrap_err();
        assert!(e.reason.contains("UTF-8 only"), "{e}");

        let ctl = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace("Acme &amp; Sons", "Acme\u{1}");
        let e = parse_notifications(ctl.as_bytes()).unwrap_err();
        assert!(e.reason.contains("U+0001"), "{e}");

        let bad_utf8 = [
            message(&notification(
                "04l000000000001AAA",
                "001000000000001AAA",
                "",
            ))
            .split("Acme")
            .next()
            .unwrap()
            .as_bytes(),
            &[0xff, 0xfe],
        ]
        .concat();
        assert!(parse_notifications(&bad_utf8).is_err());
    }

    #[test]
    fn limits_and_required_parts() {
        let many: String = (0..=MAX_NOTIFICATIONS)
            .map(|i| notification(&format!("04l{i:015}"), &format!("001{i:015}"), ""))
            .collect::<Vec<_>>()
            .join("\n");
        let e = parse_notifications(message(&many).as_bytes()).unwrap_err();
        assert!(e.reason.contains("more than 100 notifications"), "{e}");
        assert_eq!(e.path, "Envelope/Body/notifications");

        let none = message("");
        let e = parse_notifications(none.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "no Notification");

        let no_org = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace("<OrganizationId>00D000000000062EAA</OrganizationId>", "");
        let e = parse_notifications(no_org.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "no OrganizationId");

        let other_body = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><login/></soapenv:Body></soapenv:Envelope>"#;
        let e = parse_notifications(other_body.as_bytes()).unwrap_err();
        assert_eq!(e.path, "Envelope/Body");
        assert!(e.reason.contains("unexpected <login>"), "{e}");

        let twice = message(&notification(
            "04l000000000001AAA",
            "001000000000001AAA",
            "",
        ))
        .replace(
            "<ActionId>04k000000000004AAA</ActionId>",
            "<ActionId>04k000000000004AAA</ActionId><ActionId>04k000000000005AAA</ActionId>",
        );
        let e = parse_notifications(twice.as_bytes()).unwrap_err();
        assert_eq!(e.path, "Envelope/Body/notifications/ActionId");
    }

    #[test]
    fn ids_compare_on_their_15_character_form() {
        assert!(same_salesforce_id("00D000000000062EAA", "00D000000000062"));
        assert!(!same_salesforce_id("00D000000000062EAA", "00d000000000062"));
        assert!(!same_salesforce_id("00D", "00D"));
    }

    #[test]
    fn answers_are_soap_1_1() {
        let ack = ack_response(true);
        assert!(ack.contains("<Ack>true</Ack>"));
        assert!(ack.contains(OUTBOUND_NS));
        let f = fault_response(FaultCode::Client, "bad <thing> & more");
        assert!(f.contains("<faultcode>soapenv:Client</faultcode>"));
        assert!(f.contains("bad &lt;thing&gt; &amp; more"));
    }
}
