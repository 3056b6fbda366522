//! How the mock behaves where live accounts differ from a friendly stand-in, settable at
//! start ([`super::MockConfig::behaviour`]) and at run time (`POST /_mock/behaviour`,
//! [`super::MockMarketplace::set_behaviour`]):
//!
//! * the Hepsiburada user agent each merchant authorised (any other value: `403`);
//! * the words of a Hepsiburada upload status (`Done` in production);
//! * which skus the error rows of a Hepsiburada upload status name ([`ErrorRowSkus`]);
//! * Trendyol's removal of spaces inside barcodes.
//!
//! Listing flags (a campaign forbidding decreases, a locked or frozen listing) live with the
//! catalogues ([`ListingFlags`], `POST /_mock/listing`) and fail the items they concern in
//! the upload status, with the codes Hepsiburada uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// The user agent every Hepsiburada merchant authorised; `None`: any non-empty value.
    pub hepsiburada_user_agent: Option<String>,
    /// Per merchant id, overriding `hepsiburada_user_agent`.
    pub hepsiburada_user_agents: BTreeMap<String, String>,
    /// Status word of a finished upload, with or without failed rows.
    pub upload_done_word: String,
    /// Status word of an upload whose every row failed.
    pub upload_failed_word: String,
    /// Status word while an upload is processed.
    pub upload_pending_word: String,
    /// Which skus an error row of a Hepsiburada upload status names.
    pub upload_error_row_skus: ErrorRowSkus,
    /// Trendyol keeps barcodes without spaces (`869 0001` becomes `8690001`, also in batch
    /// results).
    pub trendyol_strips_barcode_spaces: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            hepsiburada_user_agent: None,
            hepsiburada_user_agents: BTreeMap::new(),
            upload_done_word: "Done".into(),
            upload_failed_word: "Failed".into(),
            upload_pending_word: "InProgress".into(),
            upload_error_row_skus: ErrorRowSkus::AsSent,
            trendyol_strips_barcode_spaces: true,
        }
    }
}

impl Behaviour {
    /// Whether `user_agent` is what `merchant_id` authorised.
    pub fn hepsiburada_accepts(&self, merchant_id: &str, user_agent: &str) -> bool {
        let user_agent = user_agent.trim();
        match self
            .hepsiburada_user_agents
            .get(merchant_id)
            .or(self.hepsiburada_user_agent.as_ref())
        {
            Some(expected) => user_agent == expected.trim(),
            None => !user_agent.is_empty(),
        }
    }

    /// A barcode as the mock's Trendyol keeps it.
    pub fn trendyol_barcode(&self, barcode: &str) -> String {
        if self.trendyol_strips_barcode_spaces {
            barcode.chars().filter(|c| !c.is_whitespace()).collect()
        } else {
            barcode.to_string()
        }
    }
}

/// Which skus an error row of a Hepsiburada upload status names. The contract does not
/// promise a `merchantSku` on every row (it may be `null`, or the row may name only
/// Hepsiburada's own `hepsiburadaSku`); such a row does not say which item failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorRowSkus {
    /// The request item's `merchantSku` and `hepsiburadaSku` (`null` where it had none).
    #[default]
    AsSent,
    /// Only a `hepsiburadaSku` (the request's, else one the mock makes up); `merchantSku` is
    /// `null`.
    HepsiburadaOnly,
    /// Neither: both `null`.
    Neither,
}

impl ErrorRowSkus {
    /// `(merchantSku, hepsiburadaSku)` of the error row of request element `element`.
    pub fn of(
        self,
        element: usize,
        merchant: Option<&str>,
        hepsiburada: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        match self {
            ErrorRowSkus::AsSent => (
                merchant.map(str::to_string),
                hepsiburada.map(str::to_string),
            ),
            ErrorRowSkus::HepsiburadaOnly => (
                None,
                Some(hepsiburada.map_or_else(|| format!("HBV{element:011}"), str::to_string)),
            ),
            ErrorRowSkus::Neither => (None, None),
        }
    }
}

/// A listing's state at the marketplace that refuses stock updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListingFlags {
    /// A campaign: a decrease is refused (`DiscountedListingStockDecrease`).
    pub stock_decrease_disabled: bool,
    /// `ListingLocked`.
    pub locked: bool,
    /// `ListingFrozen`.
    pub frozen: bool,
    /// Hepsiburada fulfils the listing from its warehouse and keeps its stock:
    /// `IsFulfilledByHB` for every update.
    pub fulfilled_by_hb: bool,
}

impl ListingFlags {
    /// Why an update from `current` to `new` is refused, if it is (a Hepsiburada error code).
    pub fn refusal(&self, current: Option<i64>, new: i64) -> Option<&'static str> {
        if self.fulfilled_by_hb {
            Some("IsFulfilledByHB")
        } else if self.locked {
            Some("ListingLocked")
        } else if self.frozen {
            Some("ListingFrozen")
        } else if self.stock_decrease_disabled && current.is_some_and(|c| new < c) {
            Some("DiscountedListingStockDecrease")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_per_merchant_and_default() {
        let mut b = Behaviour::default();
        assert!(b.hepsiburada_accepts("m", "anything"));
        assert!(!b.hepsiburada_accepts("m", " "));
        b.hepsiburada_user_agent = Some("acme_dev".into());
        b.hepsiburada_user_agents
            .insert("m2".into(), "other_dev".into());
        assert!(b.hepsiburada_accepts("m", "acme_dev"));
        assert!(!b.hepsiburada_accepts("m", "stocksync"));
        assert!(b.hepsiburada_accepts("m2", "other_dev"));
        assert!(!b.hepsiburada_accepts("m2", "acme_dev"));
    }

    #[test]
    fn error_rows_name_the_skus_the_behaviour_says() {
        let (m, h) = (Some("SKU-1"), None);
        assert_eq!(
            ErrorRowSkus::AsSent.of(3, m, h),
            (Some("SKU-1".into()), None)
        );
        assert_eq!(
            ErrorRowSkus::HepsiburadaOnly.of(3, m, h),
            (None, Some("HBV00000000003".into()))
        );
        assert_eq!(
            ErrorRowSkus::HepsiburadaOnly.of(3, m, Some("HBV9")),
            (None, Some("HBV9".into()))
        );
        assert_eq!(ErrorRowSkus::Neither.of(3, m, h), (None, None));
        let b: Behaviour =
            serde_json::from_str(r#"{"upload_error_row_skus":"hepsiburada_only"}"#).unwrap();
        assert_eq!(b.upload_error_row_skus, ErrorRowSkus::HepsiburadaOnly);
    }

    #[test]
    fn flags_refuse_with_codes() {
        let f = ListingFlags {
            stock_decrease_disabled: true,
            ..ListingFlags::default()
        };
        assert_eq!(
            f.refusal(Some(5), 3),
            Some("DiscountedListingStockDecrease")
        );
        assert_eq!(f.refusal(Some(5), 7), None);
        assert_eq!(f.refusal(None, 7), None);
        let locked = ListingFlags {
            locked: true,
            ..ListingFlags::default()
        };
        assert_eq!(locked.refusal(Some(5), 7), Some("ListingLocked"));
        assert_eq!(Behaviour::default().trendyol_barcode("869 0001"), "8690001");
    }
}
