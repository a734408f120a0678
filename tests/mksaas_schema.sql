-- The four credits tables of a MkSaaS database on PostgreSQL, as its drizzle
-- schema creates them (types, defaults, foreign keys and indexes), before
-- credits_service has touched it: no period_key, user_credit.user_id not unique.

CREATE TABLE "user" (
    id text PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    normalized_email text UNIQUE,
    email_verified boolean NOT NULL,
    image text,
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    role text,
    banned boolean,
    ban_reason text,
    ban_expires timestamp,
    customer_id text
);
CREATE INDEX user_id_idx ON "user" (id);
CREATE INDEX user_customer_id_idx ON "user" (customer_id);
CREATE INDEX user_role_idx ON "user" (role);

CREATE TABLE payment (
    id text PRIMARY KEY,
    price_id text NOT NULL,
    type text NOT NULL,
    scene text,
    interval text,
    user_id text NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
    customer_id text NOT NULL,
    subscription_id text,
    session_id text,
    invoice_id text UNIQUE,
    status text NOT NULL,
    paid boolean NOT NULL DEFAULT false,
    period_start timestamp,
    period_end timestamp,
    cancel_at_period_end boolean,
    trial_start timestamp,
    trial_end timestamp,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE INDEX payment_type_idx ON payment (type);
CREATE INDEX payment_scene_idx ON payment (scene);
CREATE INDEX payment_price_id_idx ON payment (price_id);
CREATE INDEX payment_user_id_idx ON payment (user_id);
CREATE INDEX payment_customer_id_idx ON payment (customer_id);
CREATE INDEX payment_status_idx ON payment (status);
CREATE INDEX payment_paid_idx ON payment (paid);
CREATE INDEX payment_subscription_id_idx ON payment (subscription_id);
CREATE INDEX payment_session_id_idx ON payment (session_id);
CREATE INDEX payment_invoice_id_idx ON payment (invoice_id);

CREATE TABLE user_credit (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
    current_credits integer NOT NULL DEFAULT 0,
    last_refresh_at timestamp,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE INDEX user_credit_user_id_idx ON user_credit (user_id);

CREATE TABLE credit_transaction (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
    type text NOT NULL,
    description text,
    amount integer NOT NULL,
    remaining_amount integer,
    payment_id text,
    expiration_date timestamp,
    expiration_date_processed_at timestamp,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);
CREATE INDEX credit_transaction_user_id_idx ON credit_transaction (user_id);
CREATE INDEX credit_transaction_type_idx ON credit_transaction (type);
