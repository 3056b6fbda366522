//! What one listing's comparison says ([`judge`]), the categories an audit counts ([`Kind`],
//! [`Tally`]) and the findings it keeps ([`Finding`], [`Examples`]). Pure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::marketplace::read::Listing;

/// Where a listing that was looked at ends up. Every listing lands in exactly one kind;
/// `checked` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The marketplace shows what the database implies.
    Agree,
    /// It shows another quantity, the pair is not in motion, and the listing may be pushed to.
    Drifted,
    /// It shows *less* than the database (an order it applied that the database may not
    /// have imported yet): not repaired until the difference has persisted
    /// `confirm_after` (see [`crate::reconcile::held`]); the finding says until when.
    HeldBack,
    /// Listed in the database, absent at the marketplace (also when read by key).
    MissingAtMarketplace,
    /// At the marketplace, not a listing of this store in the database.
    UnknownToDatabase,
    /// Another quantity on a listing that must not be pushed to (Hepsiburada: fulfilled by
    /// Hepsiburada, locked, frozen, or a decrease during a campaign).
    NotRepairable,
    /// The marketplace shows no quantity (`null` or missing).
    Unknown,
    /// Another quantity while the pair is in motion (queued, being sent, just pushed, or
    /// capture had not caught up): not drift.
    InMotion,
    /// A row of an answer that could not be read (not counted as checked).
    BadRow,
}

impl Kind {
    /// The kinds kept as findings (agreement and motion are only counted).
    pub const FINDINGS: [Kind; 7] = [
        Kind::Drifted,
        Kind::HeldBack,
        Kind::NotRepairable,
        Kind::MissingAtMarketplace,
        Kind::UnknownToDatabase,
        Kind::Unknown,
        Kind::BadRow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agree => "agree",
            Kind::Drifted => "drifted",
            Kind::HeldBack => "held_back",
            Kind::MissingAtMarketplace => "missing_at_marketplace",
            Kind::UnknownToDatabase => "unknown_to_database",
            Kind::NotRepairable => "not_repairable",
            Kind::Unknown => "unknown",
            Kind::InMotion => "in_motion",
            Kind::BadRow => "bad_row",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Agree,
            Kind::Drifted,
            Kind::HeldBack,
            Kind::MissingAtMarketplace,
            Kind::UnknownToDatabase,
            Kind::NotRepairable,
            Kind::Unknown,
            Kind::InMotion,
            Kind::BadRow,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The counts of an audit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub agree: u64,
    pub drifted: u64,
    /// Shown lower than the database, not repaired yet (not part of `drifted`).
    #[serde(default)]
    pub held_back: u64,
    pub missing_at_marketplace: u64,
    pub unknown_to_database: u64,
    pub not_repairable: u64,
    pub unknown: u64,
    pub in_motion: u64,
    /// Drifted pairs enqueued for repair (a subset of `drifted`).
    pub repaired: u64,
    /// Rows that could not be read (not part of `checked`).
    pub bad_rows: u64,
}

impl Tally {
    /// Every listing looked at: the sum of the categories.
    pub fn checked(&self) -> u64 {
        self.agree
            + self.drifted
            + self.held_back
            + self.missing_at_marketplace
            + self.unknown_to_database
            + self.not_repairable
            + self.unknown
            + self.in_motion
    }

    fn slot(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            Kind::Agree => &mut self.agree,
            Kind::Drifted => &mut self.drifted,
            Kind::HeldBack => &mut self.held_back,
            Kind::MissingAtMarketplace => &mut self.missing_at_marketplace,
            Kind::UnknownToDatabase => &mut self.unknown_to_database,
            Kind::NotRepairable => &mut self.not_repairable,
            Kind::Unknown => &mut self.unknown,
            Kind::InMotion => &mut self.in_motion,
            Kind::BadRow => &mut self.bad_rows,
        }
    }

    /// How many of `kind` so far.
    pub fn count(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Agree => self.agree,
            Kind::Drifted => self.drifted,
            Kind::HeldBack => self.held_back,
            Kind::MissingAtMarketplace => self.missing_at_marketplace,
            Kind::UnknownToDatabase => self.unknown_to_database,
            Kind::NotRepairable => self.not_repairable,
            Kind::Unknown => self.unknown,
            Kind::InMotion => self.in_motion,
            Kind::BadRow => self.bad_rows,
        }
    }

    pub fn add(&mut self, kind: Kind) {
        *self.slot(kind) += 1;
    }

    /// The counts in one line for people (`checked` apart).
    pub fn summary(&self) -> String {
        let mut line = format!(
            "agree {}, drifted {} ({} repaired), held back {}, missing at the marketplace {}, unknown to the database {}, not repairable {}, unknown quantity {}, in motion {}",
            self.agree,
            self.drifted,
            self.repaired,
            self.held_back,
            self.missing_at_marketplace,
            self.unknown_to_database,
            self.not_repairable,
            self.unknown,
            self.in_motion
        );
        if self.bad_rows > 0 {
            line.push_str(&format!(", unreadable rows {}", self.bad_rows));
        }
        line
    }

    /// Drift that is still there: drifted listings not enqueued for repair. Held-back
    /// listings are not in it: they wait for the database (an order import) by rule, and an
    /// audit after their time repairs them if they still differ.
    pub fn unrepaired(&self) -> u64 {
        self.drifted.saturating_sub(self.repaired)
    }
}

/// One listing that is not in agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// `None` for a listing unknown to the database and for a bad row.
    pub product_id: Option<Uuid>,
    /// The listing's key (the database's spelling when known), or a bad row's field.
    pub key: String,
    /// What the marketplace shows (`None`: unknown or absent).
    pub marketplace: Option<i64>,
    /// What the database implies (`None` when there is no listed product).
    pub database: Option<i32>,
    /// Why not repairable, or what is wrong with a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub repaired: bool,
    /// A held-back listing: the earliest time an audit may repair it if the difference is
    /// still the same then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
}

impl Finding {
    /// One line for people: the key, what each side shows, why, and whether a repair is
    /// enqueued.
    pub fn describe(&self) -> String {
        let side = |q: Option<i64>| q.map_or("-".to_string(), |q| q.to_string());
        format!(
            "{}: marketplace {}, database {}{}{}",
            self.key,
            side(self.marketplace),
            side(self.database.map(i64::from)),
            self.detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            match (self.repaired, self.held_until) {
                (true, _) => ", repair enqueued".to_string(),
                (false, Some(until)) => format!(
                    ", held back until {} (an order not imported yet?)",
                    until.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                (false, None) => String::new(),
            }
        )
    }
}

/// The verdict on a listing the database knows, before motion is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Unknown,
    Drifted,
    NotRepairable(String),
}

/// Compares a listing with the quantity the database implies. A listing that must not be
/// pushed to is only reported: Hepsiburada's warehouse stock (`isFulfilledByHB`), a locked
/// or frozen listing (with its reasons), and a decrease while a campaign forbids decreases.
pub fn judge(listing: &Listing, truth: i32) -> Verdict {
    let Some(shown) = listing.quantity else {
        return Verdict::Unknown;
    };
    if shown == i64::from(truth) {
        return Verdict::Agree;
    }
    let f = &listing.flags;
    let with = |what: &str, reasons: &[String]| {
        if reasons.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {}", reasons.join("; "))
        }
    };
    if f.fulfilled_by_hb {
        Verdict::NotRepairable("fulfilled by Hepsiburada (warehouse stock)".into())
    } else if let Some(reasons) = &f.locked {
        Verdict::NotRepairable(with("locked", reasons))
    } else if let Some(reasons) = &f.frozen {
        Verdict::NotRepairable(with("frozen", reasons))
    } else if f.stock_decrease_disabled && i64::from(truth) < shown {
        Verdict::NotRepairable("a decrease while the campaign forbids decreases".into())
    } else {
        Verdict::Drifted
    }
}

/// Examples of findings: the first few of each kind, most important kinds first.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    items: Vec<Finding>,
}

impl Examples {
    /// Per kind.
    pub const PER_KIND: usize = 5;

    /// Keeps `finding` if its kind has fewer than [`Examples::PER_KIND`] examples.
    pub fn offer(&mut self, finding: &Finding) {
        let same = self.items.iter().filter(|f| f.kind == finding.kind).count();
        if same < Self::PER_KIND {
            self.items.push(finding.clone());
        }
    }

    /// Marks the examples of these products repaired.
    pub fn repaired(&mut self, products: &[Uuid]) {
        for f in &mut self.items {
            if f.kind == Kind::Drifted && f.product_id.is_some_and(|p| products.contains(&p)) {
                f.repaired = true;
            }
        }
    }

    /// In the order of [`Kind::FINDINGS`], each kind in the order found.
    pub fn into_vec(mut self) -> Vec<Finding> {
        self.items.sort_by_key(|f| {
            Kind::FINDINGS
                .iter()
                .position(|k| *k == f.kind)
                .unwrap_or(usize::MAX)
        });
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::read::ListingFlags;

    fn listing(quantity: Option<i64>, flags: ListingFlags) -> Listing {
        Listing {
            key: "K".into(),
            quantity,
            listing_id: None,
            stock_modified_at: None,
            flags,
        }
    }

    #[test]
    fn verdicts() {
        let plain = ListingFlags::default();
        assert_eq!(judge(&listing(Some(3), plain.clone()), 3), Verdict::Agree);
        assert_eq!(judge(&listing(None, plain.clone()), 0), Verdict::Unknown);
        assert_eq!(judge(&listing(Some(0), plain.clone()), 3), Verdict::Drifted);
        // Suspension is reported by the marketplace but does not stop a push.
        let suspended = ListingFlags {
            suspended: true,
            ..ListingFlags::default()
        };
        assert_eq!(judge(&listing(Some(1), suspended), 3), Verdict::Drifted);
        let hb = ListingFlags {
            fulfilled_by_hb: true,
            ..ListingFlags::default()
        };
        assert!(
            matches!(judge(&listing(Some(9), hb.clone()), 3), Verdict::NotRepairable(r) if r.contains("fulfilled"))
        );
        assert_eq!(
            judge(&listing(Some(3), hb), 3),
            Verdict::Agree,
            "agreement is agreement"
        );
        let locked = ListingFlags {
            locked: Some(vec!["price check".into(), "image".into()]),
            ..ListingFlags::default()
        };
        assert_eq!(
            judge(&listing(Some(9), locked), 3),
            Verdict::NotRepairable("locked: price check; image".into())
        );
        let frozen = ListingFlags {
            frozen: Some(vec![]),
            ..ListingFlags::default()
        };
        assert_eq!(
            judge(&listing(Some(9), frozen), 3),
            Verdict::NotRepairable("frozen".into())
        );
        let campaign = ListingFlags {
            stock_decrease_disabled: true,
            ..ListingFlags::default()
        };
        assert!(matches!(
            judge(&listing(Some(9), campaign.clone()), 3),
            Verdict::NotRepairable(_)
        ));
        assert_eq!(
            judge(&listing(Some(1), campaign), 3),
            Verdict::Drifted,
            "an increase is allowed during a campaign"
        );
    }

    #[test]
    fn the_tally_partitions_what_was_checked() {
        let mut t = Tally::default();
        for k in [
            Kind::Agree,
            Kind::Agree,
            Kind::Drifted,
            Kind::InMotion,
            Kind::Unknown,
            Kind::BadRow,
        ] {
            t.add(k);
        }
        t.repaired = 1;
        assert_eq!(t.checked(), 5, "bad rows are not checked listings");
        assert_eq!(t.count(Kind::Agree), 2);
        assert_eq!(t.unrepaired(), 0);
        for k in Kind::FINDINGS {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn examples_keep_a_few_of_each_kind_in_order() {
        let mut e = Examples::default();
        let finding = |kind, n: u128| Finding {
            kind,
            product_id: Some(Uuid::from_u128(n)),
            key: format!("K{n}"),
            marketplace: Some(1),
            database: Some(2),
            detail: None,
            repaired: false,
            held_until: None,
        };
        for n in 0..8 {
            e.offer(&finding(Kind::Unknown, n));
        }
        e.offer(&finding(Kind::Drifted, 100));
        e.repaired(&[Uuid::from_u128(100)]);
        let v = e.into_vec();
        assert_eq!(v.len(), Examples::PER_KIND + 1);
        assert_eq!((v[0].kind, v[0].repaired), (Kind::Drifted, true));
        assert_eq!(v[1].key, "K0");
    }
}
