// The worker entry the gateway spawns:
//   culvert gateway --token secret --allow-task app.tasks.add ... \
//     --worker 'node workers/node/example/worker.mjs' --workers 2
// Import culvert-worker first: it routes console output to stderr before
// the app's modules load. (In your own project: from "culvert-worker".)
import { serveWorker } from "../index.mjs";
import { app } from "./app.mjs";

await serveWorker(app);
