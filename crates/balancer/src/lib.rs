//! The balancer component (not built yet).

use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the balancer component is not built yet")]
    NotBuilt,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        Ok(Self { kit: kit::Config::from_vars(vars, "balancer")? })
    }
}

pub async fn serve(_config: Config, _listener: TcpListener, _shutdown: kit::Shutdown) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
