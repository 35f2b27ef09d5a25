// The counsellors' console: an ES module per section of the page, no build step, no external resources
// (the page's CSP allows only this origin). Whatever a person or a counsellor wrote (messages, previews,
// notes, and anything else the API returns) is put in the page with textContent / createTextNode, never
// as HTML. This entry loads every section (each wires its own part of the page) and starts.
import { S } from "./console-core.js";
import "./console-api.js";
import { start } from "./console-session.js";
import "./console-reference.js";
import "./console-queue.js";
import "./console-conversation.js";
import "./console-live.js";
import "./console-alarm.js";
import "./console-supervision.js";
import "./console-accounts.js";

document.title = S.title;
start();
