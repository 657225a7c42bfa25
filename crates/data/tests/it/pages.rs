//! A list page is bounded in bytes (`DATA_PAGE_MAX_BYTES`) as well as in items: a page of
//! large items is cut where the next item would not fit, says so with `nextCursor`, holds at
//! least one item, and paging through returns every item once.

use futures_util::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{TestData, send_raw};

/// A page with each item as the exact JSON text the server wrote.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

/// An item's key and value, read from its text.
#[derive(Deserialize)]
struct KeyValue {
    key: String,
    value: Box<RawValue>,
}

/// Every page of the items starting with `prefix`, `limit` at a time, with the size of each
/// answer's body.
async fn pages(data: &TestData, prefix: &str, limit: u32) -> Vec<(Page, usize)> {
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/data?prefix={prefix}&limit={limit}&cursor={cursor}");
        let (status, _, raw) = send_raw(data.get(&path)).await;
        assert_eq!(status, 200, "{raw:.300}");
        let page: Page = serde_json::from_str(&raw).unwrap();
        let next = page.next_cursor.clone();
        pages.push((page, raw.len()));
        match next {
            Some(next) => cursor = next,
            None => return pages,
        }
    }
}

/// The bytes of a page's items: their JSON and the commas between them.
fn items_bytes(page: &Page) -> usize {
    page.items.iter().map(|i| i.get().len()).sum::<usize>() + page.items.len().saturating_sub(1)
}

/// Asserts the byte cap's rules over consecutive `pages` of at most `limit` items: a page
/// holds at least one item; more than one only within `cap`; and a page that ends before
/// `limit` was cut because its next item would not have fitted.
fn check_cut(pages: &[(Page, usize)], limit: usize, cap: usize) {
    for (n, pair) in pages.windows(2).enumerate() {
        let ((page, _), (next, _)) = (&pair[0], &pair[1]);
        assert!(page.next_cursor.is_some(), "page {n} is followed by another");
        if page.items.len() < limit {
            let with_next = items_bytes(page) + 1 + next.items[0].get().len();
            assert!(with_next > cap, "page {n} stopped at {} bytes though the next item fitted", items_bytes(page));
        }
    }
    for (n, (page, _)) in pages.iter().enumerate() {
        assert!(!page.items.is_empty() || pages.len() == 1, "page {n} is empty");
        assert!(page.items.len() <= limit, "page {n} holds {} items", page.items.len());
        assert!(page.items.len() == 1 || items_bytes(page) <= cap, "page {n}: {} bytes", items_bytes(page));
    }
    assert!(pages.last().unwrap().0.next_cursor.is_none());
}

/// The keys of `pages`' items, in order, and their values' texts.
fn keys_and_values(pages: &[(Page, usize)]) -> Vec<(String, Box<RawValue>)> {
    let items = pages.iter().flat_map(|(page, _)| &page.items);
    items
        .map(|i| serde_json::from_str::<KeyValue>(i.get()).unwrap())
        .map(|KeyValue { key, value }| (key, value))
        .collect()
}

const ITEMS: usize = 1000;
/// The default value limit (`DATA_MAX_VALUE_BYTES`) and page cap (`DATA_PAGE_MAX_BYTES`).
const MAX_VALUE: usize = 256 << 10;
const PAGE_CAP: usize = 1 << 20;

/// `[i,0,0,…,0]` for every `i` below 10 000: as large as the value limit allows, and as
/// costly as JSON gets to parse into a tree (about 32 bytes of memory for every two bytes of
/// text).
struct BigValues {
    zeros: String,
}

impl BigValues {
    fn new() -> Self {
        Self { zeros: ",0".repeat((MAX_VALUE - "[9999]".len()) / 2) }
    }

    fn value(&self, i: usize) -> String {
        format!("[{i}{}]", self.zeros)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_the_largest_items_stays_within_its_byte_cap_and_paging_returns_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    let key = |i: usize| format!("big:{i:04}");
    let big = BigValues::new();
    futures_util::stream::iter(0..ITEMS)
        .map(|i| {
            let body = format!(r#"{{"key":"{}","value":{}}}"#, key(i), big.value(i));
            let req = data.req(Method::POST, "/api/data").body(body);
            async move {
                let (status, _, raw) = send_raw(req).await;
                assert_eq!(status, 201, "{raw:.300}");
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;

    // A thousand items asked for, about 256 MiB of JSON: each page holds what fits in 1 MiB.
    let pages = pages(&data, "big:", 1000).await;
    check_cut(&pages, 1000, PAGE_CAP);
    for (n, (page, body_bytes)) in pages.iter().enumerate() {
        // The envelope: {"items":[…],"nextCursor":"<hex of the key>"}.
        assert!(*body_bytes <= PAGE_CAP + 64, "page {n} is {body_bytes} bytes");
        assert!(page.items.len() >= 3 || n == pages.len() - 1, "page {n} holds {}", page.items.len());
    }
    // Every item once, in key order, its value as sent (compared as text: parsing a
    // thousand of these in a debug build takes long).
    let listed: Vec<&RawValue> = pages.iter().flat_map(|(page, _)| &page.items).map(|i| &**i).collect();
    assert_eq!(listed.len(), ITEMS, "every item once");
    for (i, item) in listed.iter().enumerate() {
        let start = format!(r#"{{"key":"{}","value":{},"metadata":{{}},"#, key(i), big.value(i));
        assert!(item.get().starts_with(&start), "item {i} is {:.40}…", item.get());
    }

    // The count still applies below the byte cap.
    let (status, _, raw) = send_raw(data.get("/api/data?prefix=big:&limit=2")).await;
    assert_eq!(status, 200);
    let page: Page = serde_json::from_str(&raw).unwrap();
    assert_eq!((page.items.len(), page.next_cursor.is_some()), (2, true));
    data.stop().await;
}

#[tokio::test]
async fn a_page_holds_at_least_one_item_and_its_cursor_leads_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 700;
    let data = TestData::start(dir.path(), &[("DATA_PAGE_MAX_BYTES", "700")]).await;
    // Items of about 150, 650, 2 100, 150, 150, 150, 400 and 150 bytes of JSON.
    let sizes = [10, 500, 2000, 10, 10, 10, 250, 10];
    for (i, size) in sizes.iter().enumerate() {
        let body = format!(r#"{{"key":"p:{i}","value":"{}"}}"#, "v".repeat(*size));
        let (status, _, raw) = send_raw(data.req(Method::POST, "/api/data").body(body)).await;
        assert_eq!(status, 201, "{raw:.300}");
    }
    for limit in [1000, 3, 1] {
        let pages = pages(&data, "p:", limit).await;
        check_cut(&pages, limit as usize, cap);
        let keys: Vec<String> = keys_and_values(&pages).into_iter().map(|(k, _)| k).collect();
        let expected: Vec<String> = (0..sizes.len()).map(|i| format!("p:{i}")).collect();
        assert_eq!(keys, expected, "limit {limit}: every item once, in order");
        let counts: Vec<usize> = pages.iter().map(|(p, _)| p.items.len()).collect();
        let expected_counts: &[usize] = match limit {
            1000 => &[1, 1, 1, 3, 2],
            3 => &[1, 1, 1, 3, 2],
            _ => &[1; 8],
        };
        assert_eq!(counts, expected_counts, "limit {limit}");
    }
    data.stop().await;
}

/// Keys list in byte order on either database (`COLLATE "C"` on PostgreSQL, whose default
/// collation would put `a` before `B` and ignore the `-`), and a cursor continues in it.
#[tokio::test]
async fn keys_list_in_byte_order_and_cursors_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("WORK_DELAY_MS", "0")]).await;
    for key in ["a-b", "ab", "a", "B", "a_b", "é", "Z"] {
        data.create(key, serde_json::json!(1)).await;
    }
    let keys = |pages: Vec<(Page, usize)>| -> Vec<String> {
        let items = pages.into_iter().flat_map(|(page, _)| page.items);
        items.map(|item| serde_json::from_str::<KeyValue>(item.get()).unwrap().key).collect()
    };
    assert_eq!(keys(pages(&data, "", 2).await), ["B", "Z", "a", "a-b", "a_b", "ab", "é"]);
    assert_eq!(keys(pages(&data, "a", 10).await), ["a", "a-b", "a_b", "ab"]);
    data.stop().await;
}
