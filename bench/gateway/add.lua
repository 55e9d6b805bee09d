-- wrk: POST app.tasks.add as the Runner clients send it (spec §16).
wrk.method = "POST"
wrk.path = "/__runner/task/app.tasks.add"
wrk.body = '{"input":{"a":1,"b":2}}'
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["x-runner-token"] = "secret"
