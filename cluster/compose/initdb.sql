-- The MLflow database is POSTGRES_DB; Prefect and MLflow's user store (basic auth) get their own.
CREATE DATABASE prefect OWNER taxi;
CREATE DATABASE mlflow_auth OWNER taxi;
