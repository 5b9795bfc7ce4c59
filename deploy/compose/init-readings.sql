-- TimescaleDB part of the example schema (site-b only; runs after init-devices.sql).
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE public.readings (
    device_id integer          NOT NULL,
    ts        timestamptz      NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (device_id, ts)   -- a hypertable's keys include its time column
);
SELECT create_hypertable('public.readings', by_range('ts', INTERVAL '1 day'));

-- two days of history: the source copies it at its first start, then streams new rows
INSERT INTO public.readings (device_id, ts, value)
SELECT d.id, t, round((random() * 100)::numeric, 2)::double precision
FROM public.devices AS d,
     generate_series(now() - INTERVAL '2 days', now(), INTERVAL '10 minutes') AS t;
