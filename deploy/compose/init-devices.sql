-- Example schema of both sites (run once by the postgres image's entrypoint at first start).
CREATE TABLE public.devices (
    id           integer PRIMARY KEY,
    name         text        NOT NULL,
    kind         text        NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.devices (id, name, kind) VALUES
    (1, 'press-1',  'press'),
    (2, 'press-2',  'press'),
    (3, 'oven-1',   'oven'),
    (4, 'conveyor', 'conveyor');
