// The browser side of keeping conversations (phi3ui/conversations.py has the rules, and
// phi3ui/ui/conversation_list.py decides every write): one localStorage entry per conversation.
//
// The page's events call `window.phi3ui.step(name, names, values)` in their `js=` step: `names`
// are the event's inputs by name (phi3ui/ui/page.py, `storage_step`), `values` their values.
// The step named `name` reads and replaces them by name; they go on to Python in input order
// (`step` returns a promise: a write waits for IndexedDB, see `write`).
// The visitor's own chat presets are kept the same way, one entry per preset (phi3ui/chat_presets.py).
window.phi3ui = window.phi3ui || (() => {
  const PREFIX = window.PHI3UI_PREFIX;  // conversations.STORAGE_PREFIX, set by the page
  const PRESET_PREFIX = window.PHI3UI_PRESET_PREFIX;  // chat_presets.STORAGE_PREFIX
  const OPEN = "phi3ui:open";
  const known = {};  // id -> the rev this tab last showed or wrote: the two-tabs check
  // Set by the page's events: an answer is streaming in this tab; and the tab is busy with an
  // answer until it is saved (another tab's change is not shown then).
  let streaming = false, working = false;
  const parse = (text) => { try { return JSON.parse(text); } catch (e) { return null; } };
  const get = (id) => (id ? parse(localStorage.getItem(PREFIX + id)) : null);
  const quota = (e) => !!e && (e.name === "QuotaExceededError" || e.name === "NS_ERROR_DOM_QUOTA_REACHED"
                               || e.code === 22 || e.code === 1014);
  function all(full) {
    const out = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (!key || !key.startsWith(PREFIX)) continue;
      const r = parse(localStorage.getItem(key));
      if (!r || typeof r !== "object") continue;
      out.push(full ? r : {id: r.id, title: r.title, renamed: r.renamed, created: r.created,
                           updated: r.updated, rev: r.rev});
    }
    return out;
  }
  function presets() {
    const out = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (key && key.startsWith(PRESET_PREFIX)) out.push(parse(localStorage.getItem(key)));
    }
    return out;
  }
  // A presets job: write presets (by name) and remove some (by name).
  function writePresets(job, out) {
    try {
      for (const p of job.write || []) localStorage.setItem(PRESET_PREFIX + p.name, JSON.stringify(p));
    } catch (e) {
      out.failed = quota(e) ? "full" : "unavailable";
      out.error = String(e);
      return;
    }
    for (const name of job.remove || []) localStorage.removeItem(PRESET_PREFIX + name);
  }
  // The rev a conversation is stored with: undefined when there is none, null when it has no rev.
  const storedRev = (id) => { const r = get(id); return r ? (r.rev === undefined ? null : r.rev) : undefined; };
  // Write one item unless another tab wrote its conversation since this tab read it (`stored`
  // is the rev stored now); then write it as the copy it carries, or skip it. The record written,
  // or null.
  function writeOne(item, stored, out) {
    let rec = item.record;
    const expect = "expect" in item ? item.expect : known[rec.id];
    if (stored !== undefined && expect !== undefined && stored !== expect) {  // another tab wrote it
      if (!item.copy) { out.skipped.push(rec.id); return null; }
      out.copied.push([rec.id, item.copy.id, item.copy.title]);
      rec = Object.assign({}, rec, item.copy);
    }
    try {
      localStorage.setItem(PREFIX + rec.id, JSON.stringify(rec));
    } catch (e) {
      out.failed = quota(e) ? "full" : "unavailable";
      out.error = String(e);
      out.copied = out.copied.filter((c) => c[1] !== rec.id);
      return null;
    }
    known[rec.id] = rec.rev;
    out.saved.push(rec.id);
    return rec;
  }
  function removeOne(id, out) {
    out.removed = get(id);
    localStorage.removeItem(PREFIX + id);
    delete known[id];
  }
  // Without IndexedDB: checked against this tab's view of localStorage.
  function writeHere(items, remove, out) {
    for (const item of items) {
      if (out.failed) return;
      writeOne(item, storedRev(item.record.id), out);
    }
    if (remove && !out.failed) removeOne(remove, out);
  }

  // Writes are checked and done inside one IndexedDB transaction on a ledger of revs (id -> the
  // rev last written by any tab; null once removed). Each tab reads localStorage through its own
  // copy, which another tab's write reaches a moment later, so two tabs saving one conversation
  // at the same moment could both find the rev they expect, and the later write would replace
  // the earlier. IndexedDB transactions that touch the same store run one at a time across tabs.
  // Without an answer within LEDGER_WAIT ms (another page holds an old version open, or the
  // browser keeps no IndexedDB here), or after a failed transaction, writes go without it.
  const LEDGER_WAIT = 2000;
  let ledger = null;
  function openLedger() {
    ledger = ledger || new Promise((resolve) => {
      setTimeout(() => resolve(null), LEDGER_WAIT);
      try {
        const req = indexedDB.open(PREFIX + "revs", 1);
        req.onupgradeneeded = () => req.result.createObjectStore("revs");
        req.onsuccess = () => {
          req.result.onversionchange = () => req.result.close();  // a later version of the page
          resolve(req.result);
        };
        req.onerror = req.onblocked = () => resolve(null);
      } catch (e) { resolve(null); }
    });
    return ledger;
  }
  async function write(items, remove, out) {
    items = items || [];
    if (!items.length && !remove) return;
    const db = await openLedger();
    let tx = null;
    try { tx = db && db.transaction("revs", "readwrite"); } catch (e) { tx = null; }
    if (!tx) { writeHere(items, remove, out); return; }
    const revs = tx.objectStore("revs");
    let reached = 0, removed = false;
    const ended = new Promise((resolve) => {
      tx.oncomplete = () => resolve(true);
      tx.onerror = tx.onabort = () => resolve(false);
    });
    const next = (i) => {  // one item after another, each reading what the one before wrote
      reached = i;
      if (i === items.length || out.failed) {
        if (remove && !out.failed) { removeOne(remove, out); revs.put(null, remove); removed = true; }
        return;
      }
      const id = items[i].record.id, req = revs.get(id);
      req.onsuccess = () => {
        const rec = writeOne(items[i], req.result === undefined ? storedRev(id)
                                       : (req.result === null ? undefined : req.result), out);
        if (rec) revs.put(rec.rev, rec.id);
        next(i + 1);
      };
    };
    next(0);
    if (!(await ended)) {  // what was written stays written; the rest goes without the ledger
      ledger = Promise.resolve(null);
      writeHere(items.slice(reached), removed ? null : remove, out);
    }
  }
  // One job's storage work, in this order: write, remove, peek at or open one, list them all;
  // with `presets` (a presets job, possibly empty), the presets' writes first and the list of them.
  async function run(job) {
    job = job || {};
    const out = {saved: [], skipped: [], copied: [], failed: null, removed: null, open: null, peek: null,
                 changed: null, conversations: [], presets: []};
    try {
      if (job.presets) {
        writePresets(job.presets, out);
        out.presets = presets();
      }
      await write(job.write, job.remove, out);
      if (job.peek) out.peek = get(job.peek);
      if (job.open && !out.failed) {
        out.open = get(job.open);
        if (out.open) known[out.open.id] = out.open.rev;
      }
      if (job.watch && known[job.watch] !== undefined && !working) {
        const r = get(job.watch);
        if (r && r.rev !== known[job.watch]) { out.changed = r; known[r.id] = r.rev; }
      }
      if (job.list !== false) out.conversations = all(!!job.full);
    } catch (e) {
      out.failed = out.failed || "unavailable";
      out.error = String(e);
    }
    return out;
  }
  function preferred() {
    try { return sessionStorage.getItem(OPEN) || localStorage.getItem(OPEN); } catch (e) { return null; }
  }
  const searching = (v) => !!(v.search && v.search.trim());
  const id = (conversation) => conversation && conversation.id;

  // The steps, by name. `v` holds the event's inputs by name; a step replaces some of them.
  const steps = {
    // the stored version of the conversation on screen (what a save compares with)
    peek: async (v) => { v.storage_report = await run({peek: id(v.current), list: false}); },
    // before leaving the conversation on screen: its stored version, and whether it is answering
    leave: async (v) => { v.storage_report = await run({peek: id(v.current), list: false}); v.streaming = streaming; },
    // a file merges with every kept conversation
    merge: async (v) => {
      v.storage_report = await run({peek: id(v.current), full: true, presets: {}});
      v.streaming = streaming;
    },
    // do what Python asked (write, remove, open), then list them
    do_job: async (v) => {
      const job = v.job || {};
      v.storage_report = await run({write: job.write, remove: job.remove, open: job.open, full: searching(v),
                                    presets: job.presets});
    },
    // the chat presets: do what Python asked (write, remove), then list them
    presets: async (v) => { v.storage_report = await run({presets: v.preset_job || {}, list: false}); },
    list: async (v) => { v.storage_report = await run({full: searching(v)}); },
    // another tab changed something: the list, and the conversation on screen if this tab is idle
    sync: async (v) => { v.storage_report = await run({full: searching(v), watch: id(v.current)}); },
    everything: async (v) => { v.storage_report = await run({full: true, presets: {}}); },
    open_last: async (v) => { v.storage_report = await run({open: preferred()}); },
    // this tab (and a new tab) opens the conversation on screen next time; the page has settled
    // on it (a test, or a script, can wait for `data-phi3ui-shown` to change)
    remember: (v) => {
      if (!id(v.current)) return;
      document.body.dataset.phi3uiShown = v.current.id;
      try { sessionStorage.setItem(OPEN, v.current.id); localStorage.setItem(OPEN, v.current.id); } catch (e) {}
    },
    answering: () => { streaming = working = true; },
    answer_ended: () => { streaming = false; },
    answered: () => { streaming = working = false; },
    download: (v) => {
      if (!v.download_text) return;
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([v.download_text], {type: "application/json"}));
      a.download = "phi3ui-conversations.json";
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    },
    viewport: (v) => { v.viewport_width = window.innerWidth; },
    // the page has shown what it keeps (a test, or a script, can wait for this)
    loaded: () => { document.body.dataset.phi3uiLoaded = "1"; },
  };
  // Steps run one at a time, in the order the page's events call them, as they did when none
  // waited: a save waiting for IndexedDB must not let a later step read or list around it.
  let queue = Promise.resolve();
  function step(name, names, values) {
    const v = {};
    names.forEach((n, i) => { v[n] = values[i]; });
    const done = queue.then(() => steps[name](v)).then(() => names.map((n) => v[n]));
    queue = done.catch(() => {});
    return done;
  }
  // Another tab wrote a conversation or a chat preset: `callback` (the page's sync event) runs
  // once things settle.
  function onOtherTab(callback) {
    let timer = null;
    window.addEventListener("storage", (e) => {
      if (e.storageArea !== localStorage) return;
      if (e.key !== null && !e.key.startsWith(PREFIX) && !e.key.startsWith(PRESET_PREFIX)) return;
      clearTimeout(timer);
      timer = setTimeout(callback, 150);
    });
  }
  return {step, onOtherTab};
})();
