//! Realistic, deterministic seed data for any object of the schema: company and person names,
//! addresses, phones, emails, picklist values, amounts, dates, references to existing parents and
//! long descriptions (2–6 KB, so change events reach 3–8 KB). Seeding runs in chunks of at most
//! 200 records, each one transaction; a chunk is fully determined by its [`Chunk`] record and the
//! org state it starts from, which is what lets the journal store a seeded chunk in one short line
//! and replay it exactly.

use std::sync::{Arc, OnceLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sfsync_core::SfId;

use crate::store::{CObject, FKind, Record, State};
use crate::value::{days_from_civil, Val};
use crate::FieldType;

/// One seeded transaction: everything needed to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Chunk {
    pub object: String,
    pub seed: u64,
    /// Index of the chunk's first record within its `seed` call.
    pub start: u64,
    pub count: usize,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub transaction_key: String,
    pub user: SfId,
    pub origin: String,
    /// Share (0–100) of the records whose long text fields (Description…) are filled; the
    /// others leave them null. Journals written before the option existed mean 100.
    #[serde(default = "all_records", skip_serializing_if = "is_all_records")]
    pub long_text_percent: u8,
}

fn all_records() -> u8 {
    100
}

fn is_all_records(p: &u8) -> bool {
    *p >= 100
}

const FIRST: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Carlos",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Amara",
    "Wei",
    "Priya",
    "Hiroshi",
    "Fatima",
    "Lars",
    "Ingrid",
    "Mateo",
    "Aisha",
    "Kofi",
    "Sofia",
    "Noah",
    "Olivia",
    "Liam",
    "Emma",
    "Yusuf",
    "Chen",
    "Ana",
    "Dmitri",
    "Zoe",
];
const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Okafor",
    "Nakamura",
    "Patel",
    "Schmidt",
    "Kowalski",
    "Nguyen",
    "Haddad",
    "Lindqvist",
];
const COMPANY_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Cyberdyne",
    "Soylent",
    "Tyrell",
    "Hooli",
    "Vandelay",
    "Pied Piper",
    "Massive Dynamic",
    "Aperture",
    "Oscorp",
    "Blue Harbor",
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Redwood",
    "Summit",
    "Pioneer",
    "Granite",
    "Silverline",
    "Evergreen",
    "Lakeside",
    "Riverbend",
    "Cedar",
    "Beacon",
];
const COMPANY_B: &[&str] = &[
    "Industries",
    "Corporation",
    "Holdings",
    "Logistics",
    "Systems",
    "Partners",
    "Labs",
    "Solutions",
    "Foods",
    "Energy",
    "Health",
    "Analytics",
    "Manufacturing",
    "Group",
    "Capital",
    "Networks",
    "Media",
    "Robotics",
    "Consulting",
    "Outfitters",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Market St",
    "Mission St",
    "Broadway",
    "Park Ave",
    "Lake Shore Dr",
    "Sunset Blvd",
    "2nd Ave",
    "Washington Blvd",
    "Harbor Way",
    "Industrial Pkwy",
    "Commerce Ct",
    "Riverside Dr",
];
const CITIES: &[(&str, &str, &str, f64, f64)] = &[
    ("San Francisco", "CA", "94105", 37.79, -122.39),
    ("New York", "NY", "10001", 40.75, -73.99),
    ("Chicago", "IL", "60601", 41.88, -87.62),
    ("Austin", "TX", "78701", 30.27, -97.74),
    ("Seattle", "WA", "98101", 47.61, -122.33),
    ("Boston", "MA", "02108", 42.36, -71.06),
    ("Denver", "CO", "80202", 39.75, -104.99),
    ("Atlanta", "GA", "30303", 33.75, -84.39),
    ("Portland", "OR", "97204", 45.52, -122.68),
    ("Minneapolis", "MN", "55401", 44.98, -93.27),
    ("Phoenix", "AZ", "85004", 33.45, -112.07),
    ("Raleigh", "NC", "27601", 35.78, -78.64),
];
const TITLES: &[&str] = &[
    "CEO",
    "CFO",
    "VP Sales",
    "VP Operations",
    "Director of IT",
    "Procurement Manager",
    "Account Manager",
    "Program Analyst",
    "Case Worker",
    "Operations Lead",
    "Buyer",
];
const WORDS: &[&str] = &[
    "The customer reported",
    "Following the site visit",
    "As discussed on the call",
    "According to the service agreement",
    "The field team confirmed",
    "Residents noted",
    "Per the quarterly review",
    "The contract renewal",
    "An inspection found",
    "The billing department",
    "our integration partner",
    "the municipal office",
    "a recurring issue with",
    "the replacement schedule",
    "delays in delivery",
    "the updated budget",
    "pending approval",
    "the escalation path",
    "compliance requirements",
    "service level targets",
    "the regional warehouse",
    "customer satisfaction scores",
    "was resolved within the agreed timeframe.",
    "needs a follow-up next week.",
    "has been documented in the shared folder.",
    "will be reviewed by the committee.",
    "remains open until parts arrive.",
    "was closed after verification.",
];

/// 128 long descriptions (2–6 KB), shared by every seeded record (so 1M records do not hold 1M
/// copies).
fn descriptions() -> &'static [Arc<str>] {
    static POOL: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0x5f5f_5eed);
        (0..128)
            .map(|k| {
                let target = rng.random_range(2048..6144);
                let mut s = format!("Note {k}. ");
                while s.len() < target {
                    for _ in 0..rng.random_range(4..9) {
                        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                        s.push(' ');
                    }
                    s.push('\n');
                }
                s.truncate(target);
                Arc::from(s.trim_end())
            })
            .collect()
    })
}

fn pick<'a, R: Rng>(rng: &mut R, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// Picks a live record of object `obj` (random slot, probing forward), if any.
fn pick_parent<R: Rng>(st: &State, obj: usize, rng: &mut R) -> Option<SfId> {
    let slots = &st.stores[obj].slots;
    if slots.is_empty() || st.stores[obj].live == 0 {
        return None;
    }
    let start = rng.random_range(0..slots.len());
    for k in 0..64.min(slots.len()) {
        if let Some(r) = &slots[(start + k) % slots.len()] {
            if !r.deleted {
                return Some(r.id);
            }
        }
    }
    None
}

struct Person {
    first: &'static str,
    last: &'static str,
    company: String,
    city: usize,
}

/// Generates and inserts the chunk's records; returns their ids. Advances the commit number,
/// timestamp and transaction count exactly as a DML transaction would.
pub(crate) fn apply_chunk(st: &mut State, ch: &Chunk) -> Result<Vec<SfId>, String> {
    let compiled = st.compiled.clone();
    let c = compiled
        .object(&ch.object)
        .ok_or_else(|| format!("sObject type '{}' is not supported.", ch.object))?;
    let mut rng = StdRng::seed_from_u64(ch.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ch.start);
    let ts = ch.commit_timestamp;
    let today = ts.div_euclid(86_400_000) as i32;
    let pool = descriptions();
    let mut ids = Vec::with_capacity(ch.count);
    for _ in 0..ch.count {
        let id = st.next_id(&c.def.key_prefix);
        let n = crate::store::decode_base62(&id.as_str()[3..15]) - crate::store::ID_BASE;
        let person = Person {
            first: pick(&mut rng, FIRST),
            last: pick(&mut rng, LAST),
            company: format!(
                "{} {}",
                pick(&mut rng, COMPANY_A),
                pick(&mut rng, COMPANY_B)
            ),
            city: rng.random_range(0..CITIES.len()),
        };
        let mut rec = Record {
            id,
            deleted: false,
            vals: vec![Val::Null; c.def.fields.len()].into_boxed_slice(),
        };
        for i in 0..c.def.fields.len() {
            if !matches!(c.kinds[i], FKind::Stored) {
                continue;
            }
            let v = gen_field(
                st,
                c,
                i,
                &person,
                n,
                &mut rng,
                today,
                ts,
                pool,
                ch.long_text_percent,
            );
            rec.set(i, v);
        }
        if let Some(o) = c.owner_f {
            rec.set(o, Val::Id(ch.user));
        }
        rec.set(c.created_date_f, Val::DateTime(ts));
        rec.set(c.created_by_f, Val::Id(ch.user));
        rec.set(c.lmd_f, Val::DateTime(ts));
        rec.set(c.lmb_f, Val::Id(ch.user));
        rec.set(c.sysmod_f, Val::DateTime(ts));
        if let Some(cn) = c.case_number_f {
            st.case_counter += 1;
            rec.set(cn, Val::str(&format!("{:08}", st.case_counter)));
        }
        st.stores[c.index].push(rec);
        ids.push(id);
    }
    if !ids.is_empty() {
        st.commit_number = st.commit_number.max(ch.commit_number);
        st.last_ts = st.last_ts.max(ts);
        st.transactions += 1;
    }
    Ok(ids)
}

#[allow(clippy::too_many_arguments)]
fn gen_field(
    st: &State,
    c: &CObject,
    i: usize,
    p: &Person,
    n: u64,
    rng: &mut StdRng,
    today: i32,
    ts: i64,
    pool: &[Arc<str>],
    long_text_percent: u8,
) -> Val {
    let f = c.fd(i);
    if !f.createable {
        return Val::Null;
    }
    let name = f.name.as_str();
    let obj = c.name();
    let (city, state, zip, lat, lon) = CITIES[p.city];
    let required = f.required || !f.nillable;
    // Optional fields are sometimes empty, as in real orgs.
    if !required && !f.unique && !f.external_id && rng.random_range(0..100) < 12 {
        return match f.field_type {
            FieldType::Boolean => Val::Bool(false),
            _ => Val::Null,
        };
    }
    if f.unique || f.external_id {
        let tag: String = obj.chars().filter(|ch| ch.is_ascii_uppercase()).collect();
        return match f.field_type {
            FieldType::Email => Val::str(&format!("user{n}@{}.example.com", obj.to_lowercase())),
            _ if name == "Username" => Val::str(&format!(
                "{}.{}.{n}@example.com",
                p.first.to_lowercase(),
                p.last.to_lowercase()
            )),
            _ => Val::str(&format!("{tag}-{n:09}")),
        };
    }
    let suffix = |s: &str| name.ends_with(s);
    match f.field_type {
        FieldType::String => Val::str(&match name {
            "Name" => match obj {
                "Account" => p.company.clone(),
                "Opportunity" => format!("{} - {} units", p.company, rng.random_range(1..500) * 10),
                _ => {
                    let tag: String = obj.chars().filter(|ch| ch.is_ascii_uppercase()).collect();
                    format!("{tag}-{n:07}")
                }
            },
            "FirstName" => p.first.to_string(),
            "LastName" => p.last.to_string(),
            "Company" => p.company.clone(),
            "Title" => pick(rng, TITLES).to_string(),
            "Alias" => {
                format!("{}{}", &p.first[..1], &p.last[..p.last.len().min(5)]).to_lowercase()
            }
            "AccountNumber" => format!("CD{:06}", rng.random_range(0..1_000_000)),
            "Subject" => format!("{} - {}", pick(rng, WORDS), p.company),
            _ if suffix("City") => city.to_string(),
            _ if suffix("State") => state.to_string(),
            _ if suffix("PostalCode") => zip.to_string(),
            _ if suffix("Country") => "United States".to_string(),
            _ => {
                let max = f.length.clamp(1, 60) as usize;
                let mut s = format!("{} {}", pick(rng, WORDS), p.last);
                s.truncate(max);
                s
            }
        }),
        FieldType::Textarea => {
            if f.length >= 1000 {
                // At 100 % no extra draw, so older journals replay to the same records.
                if long_text_percent < 100 && rng.random_range(0..100u8) >= long_text_percent {
                    return Val::Null;
                }
                Val::Str(pool[rng.random_range(0..pool.len())].clone())
            } else if suffix("Street") {
                Val::str(&format!(
                    "{} {}",
                    rng.random_range(1..9999),
                    pick(rng, STREETS)
                ))
            } else {
                let mut s = pick(rng, WORDS).to_string();
                s.truncate(f.length.max(1) as usize);
                Val::str(&s)
            }
        }
        FieldType::Email => Val::str(&format!(
            "{}.{}{}@{}.example.com",
            p.first.to_lowercase(),
            p.last.to_lowercase(),
            n % 1000,
            p.company.split(' ').next().unwrap_or("mail").to_lowercase()
        )),
        FieldType::Phone => Val::str(&format!(
            "({}) 555-{:04}",
            rng.random_range(201..990),
            rng.random_range(0..10_000)
        )),
        FieldType::Url => Val::str(&format!(
            "https://www.{}.example.com",
            p.company.replace(' ', "").to_lowercase()
        )),
        FieldType::Picklist => {
            if f.picklist_values.is_empty() {
                Val::Null
            } else {
                let k = rng.random_range(0..f.picklist_values.len());
                Val::str(&f.picklist_values[k])
            }
        }
        FieldType::Multipicklist => {
            let vs: Vec<&str> = f
                .picklist_values
                .iter()
                .filter(|_| rng.random_bool(0.3))
                .map(String::as_str)
                .collect();
            if vs.is_empty() {
                Val::Null
            } else {
                Val::str(&vs.join(";"))
            }
        }
        FieldType::Reference => {
            let Some(target) = f.reference_to.first().and_then(|t| st.compiled.object(t)) else {
                return Val::Null;
            };
            if target.index == c.index && rng.random_range(0..100) < 80 {
                return Val::Null; // most records have no parent of their own type
            }
            pick_parent(st, target.index, rng)
                .map(Val::Id)
                .unwrap_or(Val::Null)
        }
        FieldType::Boolean => Val::Bool(match name {
            "IsActive" => true,
            _ => rng.random_range(0..100) < 20,
        }),
        FieldType::Int => {
            let max = 10i64.pow(f.precision.clamp(1, 9).saturating_sub(f.scale).min(6));
            Val::Int(rng.random_range(1..max.max(2)))
        }
        FieldType::Currency => Val::Num(rng.random_range(1_000..50_000_000) as f64 / 10.0),
        FieldType::Percent => Val::Num((rng.random_range(0..=10) * 10) as f64),
        FieldType::Double => {
            if suffix("Latitude") {
                Val::Num(((lat + rng.random_range(-0.05..0.05)) * 1e6).round() / 1e6)
            } else if suffix("Longitude") {
                Val::Num(((lon + rng.random_range(-0.05..0.05)) * 1e6).round() / 1e6)
            } else {
                Val::Num((rng.random_range(0.0..10_000.0f64) * 100.0).round() / 100.0)
            }
        }
        FieldType::Date => {
            if name == "Birthdate" {
                let y = rng.random_range(1950..2004);
                Val::Date(
                    days_from_civil(y, rng.random_range(1..13), rng.random_range(1..29)) as i32,
                )
            } else {
                Val::Date(today + rng.random_range(-365..365))
            }
        }
        FieldType::Datetime => Val::DateTime(
            ts + rng.random_range(-30i64..60) * 86_400_000 + rng.random_range(0..86_400) * 1000,
        ),
        FieldType::Id | FieldType::Address | FieldType::Location => Val::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_long() {
        let d = descriptions();
        assert_eq!(d.len(), 128);
        assert!(d.iter().all(|s| (1900..6200).contains(&s.len())));
    }
}
