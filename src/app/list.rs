//! One page of `ListTasks`, for both edges: the tasks that match a filter,
//! newest first, `limit` at most, after the page token (the last id of the
//! previous page), and the next page's token when the page is full; and
//! the page size rule both edges apply to what the caller asked for.

use crate::app::convert;
use crate::core::{Core, CoreError};
use crate::domain::TaskFilter;
use crate::pb;
use crate::store::ListQuery;

/// The default page size, and the largest.
pub const PAGE_SIZE: (usize, usize) = (50, 1000);

/// The page size for `asked` (the field `field`): 0 is the default, more
/// than the largest is refused.
pub fn page_size(field: &str, asked: u64) -> Result<usize, CoreError> {
    let (default, max) = PAGE_SIZE;
    match asked {
        0 => Ok(default),
        n if n > max as u64 => Err(CoreError::field(field, format!("must be at most {max}"))),
        n => Ok(n as usize),
    }
}

/// A page; `page_token` is the caller's token (empty: the first page),
/// checked as the field `token_field`.
pub async fn page(
    core: &Core,
    filter: TaskFilter,
    limit: usize,
    page_token: &str,
    token_field: &str,
) -> Result<pb::ListTasksResponse, CoreError> {
    let before = if page_token.is_empty() {
        None
    } else {
        Some(convert::parse_id(token_field, page_token)?)
    };
    let tasks = core
        .list(ListQuery {
            filter,
            limit,
            before,
        })
        .await?;
    let next_page_token = if tasks.len() == limit {
        tasks.last().map(|t| t.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListTasksResponse {
        tasks: tasks.iter().map(convert::status).collect(),
        next_page_token,
    })
}
