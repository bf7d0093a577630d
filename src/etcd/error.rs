//! etcd v2 error codes and their wire form.
//!
//! A `V2Error` is the deterministic error of the keys API: validation errors
//! from the request parser (index 0) and store errors from applying a command
//! (index = the store index at that moment). It enters from `v2::keys` and
//! `store`, and leaves as etcd's JSON error body through [`V2Error::write_json`].

use super::json::write_str;

/// An etcd v2 error: code, optional cause and the index reported with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error {
    pub code: u16,
    pub cause: Vec<u8>,
    pub index: u64,
}

pub const KEY_NOT_FOUND: u16 = 100;
pub const TEST_FAILED: u16 = 101;
pub const NOT_FILE: u16 = 102;
pub const NOT_DIR: u16 = 104;
pub const NODE_EXIST: u16 = 105;
pub const UNAUTHORIZED: u16 = 110;
pub const ROOT_RONLY: u16 = 107;
pub const DIR_NOT_EMPTY: u16 = 108;
pub const PREV_VALUE_REQUIRED: u16 = 201;
pub const TTL_NAN: u16 = 202;
pub const INDEX_NAN: u16 = 203;
pub const INVALID_FIELD: u16 = 209;
pub const INVALID_FORM: u16 = 210;
pub const REFRESH_VALUE: u16 = 211;
pub const REFRESH_TTL_REQUIRED: u16 = 212;
pub const RAFT_INTERNAL: u16 = 300;
pub const LEADER_ELECT: u16 = 301;
pub const EVENT_INDEX_CLEARED: u16 = 401;

impl V2Error {
    pub fn new(code: u16, cause: impl Into<Vec<u8>>, index: u64) -> V2Error {
        V2Error {
            code,
            cause: cause.into(),
            index,
        }
    }

    /// A request-validation error: always index 0.
    pub fn request(code: u16, cause: &str) -> V2Error {
        V2Error::new(code, cause.as_bytes(), 0)
    }

    /// etcd's message for each code (v2error.errors).
    pub fn message(&self) -> &'static str {
        match self.code {
            100 => "Key not found",
            101 => "Compare failed",
            102 => "Not a file",
            103 => "Reached the max number of peers in the cluster",
            104 => "Not a directory",
            105 => "Key already exists",
            106 => "The prefix of given key is a keyword in etcd",
            107 => "Root is read only",
            108 => "Directory not empty",
            109 => "Peer address has existed",
            110 => "The request requires user authentication",
            200 => "Value is Required in POST form",
            201 => "PrevValue is Required in POST form",
            202 => "The given TTL in POST form is not a number",
            203 => "The given index in POST form is not a number",
            204 => "Value or TTL is required in POST form",
            205 => "The given timeout in POST form is not a number",
            206 => "Name is required in POST form",
            207 => "Index or value is required",
            208 => "Index and value cannot both be specified",
            209 => "Invalid field",
            210 => "Invalid POST form",
            211 => "Value provided on refresh",
            212 => "A TTL must be provided on refresh",
            300 => "Raft Internal Error",
            301 => "During Leader Election",
            400 => "watcher is cleared due to etcd recovery",
            401 => "The event in requested index is outdated and cleared",
            402 => "Standby Internal Error",
            403 => "Invalid active size",
            404 => "Standby remove delay",
            500 => "Client Internal Error",
            _ => "Unknown error",
        }
    }

    /// The HTTP status etcd sends for this code (spec 3.3).
    pub fn status(&self) -> u16 {
        match self.code {
            100 => 404,
            101 | 105 => 412,
            102 | 108 => 403,
            110 => 401,
            300 | 301 => 500,
            _ => 400,
        }
    }

    /// `{"errorCode":..,"message":..,"cause":..,"index":..}\n`
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"errorCode\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.code).as_bytes());
        out.extend_from_slice(b",\"message\":");
        write_str(out, self.message().as_bytes());
        if !self.cause.is_empty() {
            out.extend_from_slice(b",\"cause\":");
            write_str(out, &self.cause);
        }
        out.extend_from_slice(b",\"index\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.index).as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_matches_etcd() {
        let mut out = Vec::new();
        V2Error::new(100, "/missing", 5).write_json(&mut out);
        assert_eq!(
            out,
            b"{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/missing\",\"index\":5}\n"
        );
        out.clear();
        V2Error::new(102, "", 9).write_json(&mut out);
        assert_eq!(
            out,
            b"{\"errorCode\":102,\"message\":\"Not a file\",\"index\":9}\n"
        );
    }
}
