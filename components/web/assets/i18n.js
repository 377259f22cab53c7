// Chinese and English. The language comes from the browser (navigator.language) unless
// the person chose one with the switch, which is remembered.

const STRINGS = {
  en: {
    skip: 'Skip to main content', brand: 'flashclaim', brand_console: 'flashclaim console', nav_main: 'Main',
    nav_activities: 'Activities', nav_tickets: 'My tickets', nav_login: 'Log in', nav_logout: 'Log out',
    nav_new: 'New activity', nav_blacklist: 'Blacklist', nav_redeem: 'Redeem', nav_health: 'Health',
    lang_other: '中文', loading: 'Loading…', refresh: 'Refresh', refreshed: 'Updated',
    activities_title: 'Activities', activities_empty: 'No activities right now. Check back soon.',
    state_upcoming: 'Upcoming', state_open: 'Open', state_soldout: 'Sold out', state_ended: 'Ended',
    stock: '{left} of {total} left', starts_in: 'Starts in {time}', starts_at: 'Starts', ends_at: 'Ends',
    per_user: 'Up to {n} per person', pass_needed: 'A claim pass is fetched for you first',
    claim: 'Claim', claiming: 'Claiming…', claim_wait: 'Opens in {time}', claim_closed: 'Not available',
    login_to_claim: 'Log in to claim', you_hold: 'You hold {n}',
    claimed_title: 'Claimed!', claimed_body: 'Your ticket is ready. Show it when you arrive.', view_ticket: 'View ticket',
    p_not_started: 'Not started yet: the claim opens at {time}.', p_ended: 'This activity has ended.',
    p_sold_out: 'Sold out: every ticket has been claimed.', p_limit_reached: 'You already hold as many tickets as one person may.',
    p_rate_limited: 'Too many tries. Try again in {n} s.', p_rate_limited_done: 'You can try again now.',
    p_pass_required: 'This activity needs a claim pass; fetching one…',
    p_unavailable: 'The service is busy and your claim did not happen. Press Claim to try again.',
    p_unavailable_unknown: 'We could not confirm your claim. Press Claim again: it cannot claim twice.',
    p_unauthenticated: 'Please log in again.', p_forbidden: 'This account may not claim here.',
    p_not_found: 'Not found.', p_network: 'No connection to the server. Check your network and try again.',
    p_invalid_request: 'The request was not accepted.', p_conflict: 'That cannot be done now.',
    error_title: 'There is a problem',
    login_title: 'Log in', register_title: 'Create an account', username: 'Username', password: 'Password',
    nickname: 'Nickname (optional)', username_hint: 'Letters, numbers, dots, dashes or underscores',
    password_hint: 'At least 8 characters', login_button: 'Log in', register_button: 'Create account',
    no_account: 'No account yet?', register_link: 'Create one', have_account: 'Already registered?', login_link: 'Log in',
    required_username: 'Enter a username', required_password: 'Enter a password',
    registered: 'Account created. You are logged in.', logged_out: 'You have logged out.',
    tickets_title: 'My tickets', tickets_empty: 'You have no tickets yet.', tickets_login: 'Log in to see your tickets.',
    tickets_note: 'New tickets appear here within a few seconds of the claim.',
    status_active: 'Active', status_returned: 'Given back', status_redeemed: 'Used',
    ticket_title: 'Ticket', code: 'Code', activity: 'Activity', status: 'Status', claimed_at: 'Claimed at',
    verification: 'Verification text', qr_alt: 'QR code of ticket {code}', copy_hint: 'Show this code or the QR code at the venue.',
    give_back: 'Give it back', give_back_confirm: 'Give this ticket back? Someone else can then claim it. This cannot be undone.',
    give_back_yes: 'Yes, give it back', give_back_no: 'No, keep it', given_back: 'Ticket given back. Thank you.',
    back_to_list: 'Back to activities', back_to_tickets: 'Back to my tickets',
    // console
    console_login_title: 'Operator log in', not_admin: 'This account is not an operator.',
    filter_status: 'Status', status_all: 'All', status_draft: 'Draft', status_published: 'Published', status_closed: 'Closed',
    apply: 'Apply', next_page: 'Next page', col_id: 'ID', col_name: 'Name', col_status: 'Status', col_window: 'Window',
    col_stock: 'Stock left', col_kind: 'Kind', none_found: 'No activities match.',
    new_title: 'New activity', edit_title: 'Edit activity', f_name: 'Name', f_description: 'Description',
    f_image_url: 'Image URL (optional)', f_starts_at: 'Starts at', f_ends_at: 'Ends at', f_time_hint: 'Your local time',
    f_stock_total: 'Stock', f_per_user_limit: 'Per-person limit', f_kind: 'Kind', kind_counter: 'Counter (codes made at claim)',
    kind_codes: 'Code pool (uploaded codes)', f_require_pass: 'Require a claim pass (anti-bot)',
    f_stock_buckets: 'Redis primaries to spread over',
    f_stock_buckets_hint: '1 unless this one sale outgrows one Redis primary (Redis Cluster, see DEPLOY.md). Above 1: counter kind only, no claim pass. Fixed once published.',
    save_draft: 'Save draft', saved: 'Saved.', edit: 'Edit', publish: 'Publish', close: 'Close activity',
    publish_confirm: 'Publish this activity? Users will see it and can claim when it opens.', confirm_yes: 'Yes', confirm_no: 'Cancel',
    close_confirm: 'Close this activity? Claims will be refused from now on. This is final.',
    published: 'Published.', closed: 'Closed.',
    live_title: 'Live view', live_note: 'Refreshed every 2 seconds.', s_stock_left: 'Stock left', s_sold: 'Sold', s_returned: 'Returned',
    s_redeemed: 'Redeemed', s_backlog: 'Drain backlog', s_pool_left: 'Codes left in pool', s_passes: 'Passes issued',
    cpm_title: 'Claims per minute', sold_out_at: 'Sold out (first seen at {time})', not_sold_out: 'Not sold out yet',
    codes_title: 'Upload codes', codes_file: 'CSV file of codes', codes_hint: 'One code per line; a header row "code" is allowed',
    upload: 'Upload', uploaded: '{n} codes added.', rejected_title: 'Rejected lines', bad_lines: 'Bad codes', duplicate_lines: 'Duplicates',
    choose_file: 'Choose a file first.',
    export_title: 'Export', export_csv: 'Export claims (CSV)', exported: 'Downloaded {name}.',
    reconcile: 'Reconcile', reconcile_ok: 'Redis and Postgres agree.', reconcile_drift: 'Drift found.',
    blacklist_title: 'Blacklist', user_id: 'User ID', reason: 'Reason (optional)', add: 'Add to blacklist',
    remove: 'Remove', blacklist_empty: 'Nobody is blacklisted.', added: 'Added.', removed: 'Removed.',
    redeem_title: 'Redeem a ticket', qr_payload: 'QR payload', qr_hint: 'Paste what the ticket\'s QR code says (starts with FC1.)',
    redeem_button: 'Redeem', redeemed: 'Redeemed ticket {code}.', scan: 'Scan with camera', scan_stop: 'Stop camera',
    required_payload: 'Paste the QR payload', health_title: 'Stores', h_status: 'Status', h_redis: 'Redis', h_postgres: 'Postgres',
    h_backlog: 'Drain backlog', h_oldest: 'Oldest entry age (ms)', h_down: 'Redis shards down', h_group: 'Redis group {shard}',
    h_primary: 'primary {primary}, {replicas} replicas, {sync}', h_in_sync: 'in sync', h_not_in_sync: 'NOT in sync', yes: 'yes', no: 'no', activity_n: 'Activity {id}',
    open_detail: 'Open', limit_held: 'You hold your limit', types_live: 'By ticket type', required_user: 'Enter the user ID',
    types_title: 'Ticket types (optional)', types_hint: 'Leave empty for one stock. Add types for seat classes or coupon tiers, each with its own stock and limit.',
    type_add: 'Add a ticket type', type_remove: 'Remove this type', type_n: 'Ticket type {n}', type_key: 'Key',
    type_key_hint: 'Lower-case letters, digits, - or _ (e.g. vip)', type_name: 'Name shown to users',
    type_for_codes: 'Ticket type', choose_type: 'Ticket type', type_stock: '{name}: {left} of {total} left',
  },
  zh: {
    skip: '跳到主要内容', brand: 'flashclaim 抢票', brand_console: 'flashclaim 运营后台', nav_main: '主导航',
    nav_activities: '活动', nav_tickets: '我的票', nav_login: '登录', nav_logout: '退出登录',
    nav_new: '新建活动', nav_blacklist: '黑名单', nav_redeem: '核销', nav_health: '健康状态',
    lang_other: 'English', loading: '加载中…', refresh: '刷新', refreshed: '已更新',
    activities_title: '活动', activities_empty: '暂无活动，请稍后再来。',
    state_upcoming: '即将开始', state_open: '进行中', state_soldout: '已抢光', state_ended: '已结束',
    stock: '剩余 {left} / {total}', starts_in: '{time} 后开始', starts_at: '开始时间', ends_at: '结束时间',
    per_user: '每人最多 {n} 张', pass_needed: '将先为你领取抢票资格',
    claim: '立即抢', claiming: '抢票中…', claim_wait: '{time} 后开抢', claim_closed: '不可领取',
    login_to_claim: '登录后抢票', you_hold: '你已持有 {n} 张',
    claimed_title: '抢到了！', claimed_body: '你的票已就绪，到场时出示即可。', view_ticket: '查看票',
    p_not_started: '还未开始：{time} 开抢。', p_ended: '活动已结束。',
    p_sold_out: '已抢光：票已全部被领取。', p_limit_reached: '你已达到每人限领数量。',
    p_rate_limited: '操作太频繁，请 {n} 秒后再试。', p_rate_limited_done: '现在可以再试了。',
    p_pass_required: '该活动需要抢票资格，正在领取…',
    p_unavailable: '服务繁忙，本次没有抢到。请再按一次“立即抢”。',
    p_unavailable_unknown: '暂时无法确认结果。请再按一次“立即抢”，不会重复领取。',
    p_unauthenticated: '请重新登录。', p_forbidden: '该账号无法在此领取。',
    p_not_found: '未找到。', p_network: '无法连接服务器，请检查网络后重试。',
    p_invalid_request: '请求未被接受。', p_conflict: '现在无法这样操作。',
    error_title: '出现问题',
    login_title: '登录', register_title: '注册账号', username: '用户名', password: '密码',
    nickname: '昵称（可选）', username_hint: '字母、数字、点、横线或下划线',
    password_hint: '至少 8 个字符', login_button: '登录', register_button: '注册',
    no_account: '还没有账号？', register_link: '注册一个', have_account: '已有账号？', login_link: '登录',
    required_username: '请输入用户名', required_password: '请输入密码',
    registered: '注册成功，已为你登录。', logged_out: '你已退出登录。',
    tickets_title: '我的票', tickets_empty: '你还没有票。', tickets_login: '登录后查看你的票。',
    tickets_note: '新抢到的票会在几秒内出现在这里。',
    status_active: '有效', status_returned: '已退回', status_redeemed: '已使用',
    ticket_title: '票', code: '票码', activity: '活动', status: '状态', claimed_at: '领取时间',
    verification: '校验文本', qr_alt: '票 {code} 的二维码', copy_hint: '到场时出示票码或二维码。',
    give_back: '退回', give_back_confirm: '确定退回这张票吗？退回后其他人可以领取，且无法撤销。',
    give_back_yes: '确定退回', give_back_no: '不退了', given_back: '票已退回，谢谢。',
    back_to_list: '返回活动列表', back_to_tickets: '返回我的票',
    console_login_title: '运营登录', not_admin: '该账号不是运营账号。',
    filter_status: '状态', status_all: '全部', status_draft: '草稿', status_published: '已发布', status_closed: '已关闭',
    apply: '筛选', next_page: '下一页', col_id: 'ID', col_name: '名称', col_status: '状态', col_window: '时间',
    col_stock: '剩余库存', col_kind: '类型', none_found: '没有符合条件的活动。',
    new_title: '新建活动', edit_title: '编辑活动', f_name: '名称', f_description: '描述',
    f_image_url: '图片地址（可选）', f_starts_at: '开始时间', f_ends_at: '结束时间', f_time_hint: '本地时间',
    f_stock_total: '库存', f_per_user_limit: '每人限领', f_kind: '类型', kind_counter: '计数（领取时生成票码）',
    kind_codes: '票码池（上传的票码）', f_require_pass: '需要抢票资格（防刷）',
    f_stock_buckets: '分散到的 Redis 主节点数',
    f_stock_buckets_hint: '一般为 1；单场活动超出一个 Redis 主节点的能力时再调大（Redis Cluster，见 DEPLOY.md）。大于 1 时只支持计数类型，且不能要求抢票资格。发布后不可更改。',
    save_draft: '保存草稿', saved: '已保存。', edit: '编辑', publish: '发布', close: '关闭活动',
    publish_confirm: '确定发布吗？用户将看到该活动，开始后即可领取。', confirm_yes: '确定', confirm_no: '取消',
    close_confirm: '确定关闭吗？此后所有领取都会被拒绝，且无法恢复。',
    published: '已发布。', closed: '已关闭。',
    live_title: '实时数据', live_note: '每 2 秒刷新。', s_stock_left: '剩余库存', s_sold: '已领取', s_returned: '已退回',
    s_redeemed: '已核销', s_backlog: '待落库', s_pool_left: '票码池剩余', s_passes: '已发资格',
    cpm_title: '每分钟领取数', sold_out_at: '已抢光（首次发现于 {time}）', not_sold_out: '尚未抢光',
    codes_title: '上传票码', codes_file: '票码 CSV 文件', codes_hint: '每行一个票码，可有表头 "code"',
    upload: '上传', uploaded: '已添加 {n} 个票码。', rejected_title: '被拒绝的行', bad_lines: '格式错误', duplicate_lines: '重复',
    choose_file: '请先选择文件。',
    export_title: '导出', export_csv: '导出领取记录（CSV）', exported: '已下载 {name}。',
    reconcile: '对账', reconcile_ok: 'Redis 与 Postgres 一致。', reconcile_drift: '发现差异。',
    blacklist_title: '黑名单', user_id: '用户 ID', reason: '原因（可选）', add: '加入黑名单',
    remove: '移除', blacklist_empty: '黑名单为空。', added: '已加入。', removed: '已移除。',
    redeem_title: '核销票', qr_payload: '二维码内容', qr_hint: '粘贴票的二维码内容（以 FC1. 开头）',
    redeem_button: '核销', redeemed: '已核销票 {code}。', scan: '用摄像头扫描', scan_stop: '关闭摄像头',
    required_payload: '请粘贴二维码内容', health_title: '存储状态', h_status: '状态', h_redis: 'Redis', h_postgres: 'Postgres',
    h_backlog: '待落库', h_oldest: '最早条目等待（毫秒）', h_down: '不可用的 Redis 分片', h_group: 'Redis 组 {shard}',
    h_primary: '主节点 {primary}，{replicas} 个副本，{sync}', h_in_sync: '已同步', h_not_in_sync: '未同步', yes: '是', no: '否', activity_n: '活动 {id}',
    open_detail: '打开', limit_held: '已达限领数量', types_live: '按票种', required_user: '请输入用户 ID',
    types_title: '票种（可选）', types_hint: '不填则只有一种库存。可按座位等级或券面额添加票种，各有库存与限领。',
    type_add: '添加票种', type_remove: '删除该票种', type_n: '票种 {n}', type_key: '标识',
    type_key_hint: '小写字母、数字、- 或 _（例如 vip）', type_name: '向用户显示的名称',
    type_for_codes: '票种', choose_type: '选择票种', type_stock: '{name}：剩余 {left} / {total}',
  },
};

const KEY = 'flashclaim.lang';

export let lang = (() => {
  const chosen = localStorage.getItem(KEY);
  if (chosen === 'zh' || chosen === 'en') return chosen;
  return (navigator.language || 'en').toLowerCase().startsWith('zh') ? 'zh' : 'en';
})();

export function t(key, vars = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

// Fills the static parts of the page and wires the switch; `rerender` redraws the view.
export function setupLanguage(rerender) {
  const apply = () => {
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
    document.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll('[data-i18n-aria]').forEach((el) => el.setAttribute('aria-label', t(el.dataset.i18nAria)));
    const sw = document.getElementById('lang-switch');
    sw.textContent = t('lang_other');
    sw.lang = lang === 'zh' ? 'en' : 'zh';
  };
  document.getElementById('lang-switch').addEventListener('click', () => {
    lang = lang === 'zh' ? 'en' : 'zh';
    localStorage.setItem(KEY, lang);
    apply();
    rerender();
  });
  apply();
}

// "1:02:03" or "02:03" for a countdown.
export function duration(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  const two = (n) => String(n).padStart(2, '0');
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${two(mm)}:${two(ss)}`;
}

// The message for a problem: our wording for the known codes, the API's own detail otherwise
// (and beside it when it adds something, e.g. which field was wrong).
export function problemText(problem, vars = {}) {
  const key = `p_${problem.code}`;
  const known = STRINGS.en[key] !== undefined;
  if (known && !['invalid_request', 'conflict', 'not_found', 'forbidden'].includes(problem.code)) return t(key, vars);
  return problem.body?.detail || (known ? t(key, vars) : `${problem.status || ''} ${problem.code}`.trim());
}
