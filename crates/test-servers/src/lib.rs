//! Real servers for tests, started from their own programs in temporary folders:
//! [`Postgres`] (`initdb` + `pg_ctl`) and [`S3Server`] (moto's standalone S3 server). Nothing
//! is faked in process, and nothing is downloaded at run time: the programs must be installed
//! (`.ci/run` installs them), and a missing one fails the test with how to install it.
//!
//! Each server is meant to be started once per test binary ([`Postgres::shared`],
//! [`S3Server::shared`]), with a fresh database or bucket per test. A server is stopped and
//! its folder removed by a small supervising shell that waits on a pipe from this process:
//! when the value is dropped, or when the test binary exits however it exits (statics are
//! never dropped), the pipe closes and the shell cleans up.

mod postgres;
mod process;
mod s3;

pub use postgres::Postgres;
pub use s3::S3Server;
