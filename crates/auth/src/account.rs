//! Accounts: what a valid username, email and password are, and the `users` table.

use kit::db::Db;
use kit::http::ApiError;
use serde::Serialize;

pub const USERNAME_LENGTH: std::ops::RangeInclusive<usize> = 3..=32;
pub const PASSWORD_MAX_LENGTH: usize = 128;
pub const EMAIL_MAX_LENGTH: usize = 254;

/// 3-32 characters of `A-Z a-z 0-9 _ . -`.
pub fn validate_username(username: &str) -> Result<(), String> {
    if !USERNAME_LENGTH.contains(&username.len()) {
        return Err(format!(
            "username must be {} to {} characters long",
            USERNAME_LENGTH.start(),
            USERNAME_LENGTH.end()
        ));
    }
    if !username.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err("username may contain only letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

/// The shape `local@domain.tld`: one `@`, no spaces or control characters, a dot in a domain
/// of non-empty labels, at most 254 characters.
pub fn validate_email(email: &str) -> Result<(), String> {
    let invalid = || Err("email must look like name@example.com".to_owned());
    if email.chars().count() > EMAIL_MAX_LENGTH {
        return Err(format!("email must be at most {EMAIL_MAX_LENGTH} characters long"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid();
    }
    let Some((local, domain)) = email.split_once('@') else { return invalid() };
    let labels_ok =
        domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if local.is_empty() || local.len() > 64 || domain.contains('@') || !domain.contains('.') || !labels_ok {
        return invalid();
    }
    Ok(())
}

/// `min..=128` characters.
pub fn validate_password(password: &str, min: usize) -> Result<(), String> {
    let n = password.chars().count();
    if n < min || n > PASSWORD_MAX_LENGTH {
        return Err(format!("password must be {min} to {PASSWORD_MAX_LENGTH} characters long"));
    }
    Ok(())
}

/// A user as every answer shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub created_at: String,
}

/// A user with the stored password hash, for logins.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// The case-insensitive form the unique indexes hold.
pub fn lookup_key(name: &str) -> String {
    name.to_lowercase()
}

type Row = (i64, String, String, String, i64);

fn user_of((id, username, email, _, created_at): &Row) -> User {
    User {
        id: *id,
        username: username.clone(),
        email: email.clone(),
        created_at: kit::time::iso_from_millis(*created_at),
    }
}

/// The account whose username or email is `identifier` (case-insensitive).
pub async fn find(db: &Db, identifier: &str) -> Result<Option<Credentials>, ApiError> {
    let key = &lookup_key(identifier);
    let row: Option<Row> = kit::db::retry(db, move || async move {
        sqlx::query_as(
            "SELECT id, username, email, password_hash, created_at FROM users
             WHERE username_key = $1 OR email_key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *db.acquire().await?)
        .await
    })
    .await
    .map_err(kit::db::api_error)?;
    Ok(row.map(|row| Credentials { user: user_of(&row), password_hash: row.3 }))
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<User>, ApiError> {
    let row: Option<Row> = kit::db::retry(db, move || async move {
        sqlx::query_as("SELECT id, username, email, password_hash, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *db.acquire().await?)
            .await
    })
    .await
    .map_err(kit::db::api_error)?;
    Ok(row.as_ref().map(user_of))
}

/// 409 with what is taken, if the username or the email is.
pub async fn check_free(db: &Db, username: &str, email: &str) -> Result<(), ApiError> {
    let (username_key, email_key) = (&lookup_key(username), &lookup_key(email));
    let taken: Option<(String, String)> = kit::db::retry(db, move || async move {
        sqlx::query_as("SELECT username_key, email_key FROM users WHERE username_key = $1 OR email_key = $2 LIMIT 1")
            .bind(username_key)
            .bind(email_key)
            .fetch_optional(&mut *db.acquire().await?)
            .await
    })
    .await
    .map_err(kit::db::api_error)?;
    match taken {
        None => Ok(()),
        Some((u, _)) if &u == username_key => Err(ApiError::conflict("username is already taken")),
        Some(_) => Err(ApiError::conflict("email is already registered")),
    }
}

/// Creates the account; 409 if the username or email was taken meanwhile.
pub async fn insert(db: &Db, username: &str, email: &str, password_hash: &str) -> Result<User, ApiError> {
    let now = kit::time::unix_millis();
    // Run once, not through `kit::db::retry`: an insert whose connection was lost may have
    // happened, and running it again would answer 409 to the registration that made it.
    let inserted: Result<(i64,), sqlx::Error> = async {
        sqlx::query_as(
            "INSERT INTO users (username, email, username_key, email_key, password_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(username)
        .bind(email)
        .bind(lookup_key(username))
        .bind(lookup_key(email))
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *db.acquire().await?)
        .await
    }
    .await;
    match inserted {
        Ok((id,)) => Ok(User {
            id,
            username: username.to_owned(),
            email: email.to_owned(),
            created_at: kit::time::iso_from_millis(now),
        }),
        // Another request registered the same name between the check and the insert.
        Err(e) if kit::db::is_unique_violation(&e) => {
            check_free(db, username, email).await?;
            Err(ApiError::conflict("username or email is already taken"))
        }
        Err(e) => Err(kit::db::api_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let check = |name: &str, ok: bool| assert_eq!(validate_username(name).is_ok(), ok, "{name:?}");
        check("ada", true);
        check("Ada_Lovelace.1815-x", true);
        check(&"a".repeat(32), true);
        check("ab", false);
        check(&"a".repeat(33), false);
        check("ada lovelace", false);
        check("ada@home", false);
        check("ädä", false);
        check("'; DROP TABLE users; --", false);
        check("", false);
    }

    #[test]
    fn emails() {
        let check = |email: &str, ok: bool| assert_eq!(validate_email(email).is_ok(), ok, "{email:?}");
        check("ada@example.com", true);
        check("Ada.Lovelace+orch@mail.example.co.uk", true);
        check("ada@localhost", false);
        check("ada.example.com", false);
        check("@example.com", false);
        check("ada@", false);
        check("ada@@example.com", false);
        check("ada@exa mple.com", false);
        check("ada@example..com", false);
        check("ada@-example.com", false);
        check(" ada@example.com", false);
        check(&format!("{}@example.com", "a".repeat(65)), false);
        check(&format!("a@{}.com", "b".repeat(250)), false);
    }

    #[test]
    fn passwords() {
        assert!(validate_password("pass123", 6).is_ok(), "the original walkthrough's password");
        assert!(validate_password("12345", 6).is_err());
        assert!(validate_password("123456", 6).is_ok());
        assert!(validate_password("pass123", 8).is_err());
        assert!(validate_password(&"é".repeat(128), 6).is_ok(), "characters, not bytes");
        assert_eq!(validate_password(&"x".repeat(129), 6).unwrap_err(), "password must be 6 to 128 characters long");
    }
}
