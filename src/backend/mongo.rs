//! Where MongoDB is: the settings a node, a worker and the commands that
//! read the store share.

/// The store's URL and database.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MongoConfig {
    /// MongoDB URL (durable history): mongodb:// or mongodb+srv://.
    #[arg(long = "mongo-url", env = "CONFAB_MONGO_URL", value_parser = parse_url)]
    pub mongo_url: String,
    /// MongoDB database name.
    #[arg(long = "mongo-db", env = "CONFAB_MONGO_DB", default_value = "confab", value_parser = parse_db)]
    pub mongo_db: String,
}

fn parse_url(raw: &str) -> Result<String, String> {
    if !(raw.starts_with("mongodb://") || raw.starts_with("mongodb+srv://")) {
        return Err("must start with mongodb:// or mongodb+srv://".into());
    }
    Ok(raw.to_string())
}

fn parse_db(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 63 || raw.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err("must be 1-63 characters without / \\ . space \" $".into());
    }
    Ok(raw.to_string())
}
