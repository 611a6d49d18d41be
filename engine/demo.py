"""The demo set: 30 everyday sentences in 8 languages, synthesised with espeak-ng on first use.

It exists so that a fresh checkout can run every job end to end with no download: the sentences are parallel (the
i-th sentence of every language is a translation of the same English sentence, id ``demo-NNN``), so cross-lingual
comparisons have something to find. Synthetic speech is not a benchmark; use FLEURS for numbers you report.

Clips are cached as ``<cache>/demo/<version>/<lang>/<id>.wav`` (22.05 kHz mono 16-bit, espeak-ng's own format;
``load_audio`` resamples to 16 kHz). ``<cache>`` is the ``cache_dir`` argument, else ``$BABELGRID_CACHE``, else
``$XDG_CACHE_HOME/babelgrid``, else ``~/.cache/babelgrid``. ``<version>`` hashes the sentences and voice settings,
so editing them starts a fresh cache instead of mixing old clips with new text.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import soundfile

from engine.sources import DatasetError, Utterance, check_language

ESPEAK = "espeak-ng"
DEMO_LANGUAGES = ("en", "de", "es", "it", "pl", "sv", "tr", "ru")  # voices espeak-ng 1.51 speaks well
BASE_SPEED = 150  # words per minute; espeak-ng's default, 175, runs words together at sentence ends
BASE_PITCH = 50  # espeak-ng's 0-99 pitch scale; 50 is its default
SYNTH_WORKERS = 4  # espeak-ng is single-threaded and each clip takes tens of ms

# Per sentence (the same in every language, so a sentence keeps its rhythm across translations): speed 150-170 wpm,
# pitch 42-58. Deterministic, so every machine synthesises the same durations from the same espeak-ng version.
_SPEED_STEPS = (0, 10, 5, 20, 15)
_PITCH_STEPS = (0, 8, -8, 4, -4, 6, -6)

# One entry per sentence id; every entry translates the English one. Numbers are partly digits, partly words,
# so the set exercises both.
SENTENCES: tuple[dict[str, str], ...] = (
    {
        "en": "Good morning, how are you today?",
        "de": "Guten Morgen, wie geht es dir heute?",
        "es": "Buenos días, ¿cómo estás hoy?",
        "it": "Buongiorno, come stai oggi?",
        "pl": "Dzień dobry, jak się dzisiaj masz?",
        "sv": "God morgon, hur mår du i dag?",
        "tr": "Günaydın, bugün nasılsın?",
        "ru": "Доброе утро, как у тебя дела сегодня?",
    },
    {
        "en": "The train to Berlin leaves at seven o'clock.",
        "de": "Der Zug nach Berlin fährt um sieben Uhr ab.",
        "es": "El tren a Berlín sale a las siete.",
        "it": "Il treno per Berlino parte alle sette.",
        "pl": "Pociąg do Berlina odjeżdża o siódmej.",
        "sv": "Tåget till Berlin går klockan sju.",
        "tr": "Berlin'e giden tren saat yedide kalkıyor.",
        "ru": "Поезд в Берлин отправляется в семь часов.",
    },
    {
        "en": "My sister lives in a small house near the sea.",
        "de": "Meine Schwester wohnt in einem kleinen Haus am Meer.",
        "es": "Mi hermana vive en una casa pequeña cerca del mar.",
        "it": "Mia sorella vive in una piccola casa vicino al mare.",
        "pl": "Moja siostra mieszka w małym domu nad morzem.",
        "sv": "Min syster bor i ett litet hus nära havet.",
        "tr": "Kız kardeşim deniz kenarında küçük bir evde yaşıyor.",
        "ru": "Моя сестра живёт в маленьком доме у моря.",
    },
    {
        "en": "Where is the nearest pharmacy?",
        "de": "Wo ist die nächste Apotheke?",
        "es": "¿Dónde está la farmacia más cercana?",
        "it": "Dov'è la farmacia più vicina?",
        "pl": "Gdzie jest najbliższa apteka?",
        "sv": "Var ligger närmaste apotek?",
        "tr": "En yakın eczane nerede?",
        "ru": "Где ближайшая аптека?",
    },
    {
        "en": "We bought three apples and two bottles of milk.",
        "de": "Wir haben drei Äpfel und zwei Flaschen Milch gekauft.",
        "es": "Compramos tres manzanas y dos botellas de leche.",
        "it": "Abbiamo comprato tre mele e due bottiglie di latte.",
        "pl": "Kupiliśmy trzy jabłka i dwie butelki mleka.",
        "sv": "Vi köpte tre äpplen och två flaskor mjölk.",
        "tr": "Üç elma ve iki şişe süt aldık.",
        "ru": "Мы купили три яблока и две бутылки молока.",
    },
    {
        "en": "It is raining, so take an umbrella with you.",
        "de": "Es regnet, also nimm einen Regenschirm mit.",
        "es": "Está lloviendo, así que llévate un paraguas.",
        "it": "Sta piovendo, quindi prendi un ombrello.",
        "pl": "Pada deszcz, więc weź ze sobą parasol.",
        "sv": "Det regnar, så ta med dig ett paraply.",
        "tr": "Yağmur yağıyor, yanına bir şemsiye al.",
        "ru": "Идёт дождь, так что возьми с собой зонт.",
    },
    {
        "en": "The museum is closed on Mondays.",
        "de": "Das Museum ist montags geschlossen.",
        "es": "El museo está cerrado los lunes.",
        "it": "Il museo è chiuso il lunedì.",
        "pl": "Muzeum jest zamknięte w poniedziałki.",
        "sv": "Museet är stängt på måndagar.",
        "tr": "Müze pazartesi günleri kapalı.",
        "ru": "Музей закрыт по понедельникам.",
    },
    {
        "en": "How much does this ticket cost?",
        "de": "Wie viel kostet diese Fahrkarte?",
        "es": "¿Cuánto cuesta este billete?",
        "it": "Quanto costa questo biglietto?",
        "pl": "Ile kosztuje ten bilet?",
        "sv": "Hur mycket kostar den här biljetten?",
        "tr": "Bu bilet ne kadar?",
        "ru": "Сколько стоит этот билет?",
    },
    {
        "en": "My brother is twenty-five years old.",
        "de": "Mein Bruder ist fünfundzwanzig Jahre alt.",
        "es": "Mi hermano tiene veinticinco años.",
        "it": "Mio fratello ha venticinque anni.",
        "pl": "Mój brat ma dwadzieścia pięć lat.",
        "sv": "Min bror är tjugofem år gammal.",
        "tr": "Erkek kardeşim yirmi beş yaşında.",
        "ru": "Моему брату двадцать пять лет.",
    },
    {
        "en": "The children are playing football in the park.",
        "de": "Die Kinder spielen Fußball im Park.",
        "es": "Los niños están jugando al fútbol en el parque.",
        "it": "I bambini giocano a calcio nel parco.",
        "pl": "Dzieci grają w piłkę nożną w parku.",
        "sv": "Barnen spelar fotboll i parken.",
        "tr": "Çocuklar parkta futbol oynuyor.",
        "ru": "Дети играют в футбол в парке.",
    },
    {
        "en": "I would like a cup of coffee, please.",
        "de": "Ich hätte gern eine Tasse Kaffee, bitte.",
        "es": "Quisiera una taza de café, por favor.",
        "it": "Vorrei una tazza di caffè, per favore.",
        "pl": "Poproszę filiżankę kawy.",
        "sv": "Jag skulle vilja ha en kopp kaffe, tack.",
        "tr": "Bir fincan kahve istiyorum, lütfen.",
        "ru": "Я бы хотел чашку кофе, пожалуйста.",
    },
    {
        "en": "The library opens at nine in the morning.",
        "de": "Die Bibliothek öffnet um neun Uhr morgens.",
        "es": "La biblioteca abre a las nueve de la mañana.",
        "it": "La biblioteca apre alle nove del mattino.",
        "pl": "Biblioteka otwiera się o dziewiątej rano.",
        "sv": "Biblioteket öppnar klockan nio på morgonen.",
        "tr": "Kütüphane sabah dokuzda açılıyor.",
        "ru": "Библиотека открывается в девять утра.",
    },
    {
        "en": "Can you help me find the station?",
        "de": "Kannst du mir helfen, den Bahnhof zu finden?",
        "es": "¿Puedes ayudarme a encontrar la estación?",
        "it": "Puoi aiutarmi a trovare la stazione?",
        "pl": "Czy możesz pomóc mi znaleźć dworzec?",
        "sv": "Kan du hjälpa mig att hitta stationen?",
        "tr": "İstasyonu bulmama yardım edebilir misin?",
        "ru": "Ты можешь помочь мне найти вокзал?",
    },
    {
        "en": "Our flight to Rome was two hours late.",
        "de": "Unser Flug nach Rom hatte zwei Stunden Verspätung.",
        "es": "Nuestro vuelo a Roma tuvo dos horas de retraso.",
        "it": "Il nostro volo per Roma ha avuto due ore di ritardo.",
        "pl": "Nasz lot do Rzymu był opóźniony o dwie godziny.",
        "sv": "Vårt flyg till Rom var två timmar försenat.",
        "tr": "Roma'ya uçuşumuz iki saat rötar yaptı.",
        "ru": "Наш рейс в Рим задержался на два часа.",
    },
    {
        "en": "She reads a book every evening before bed.",
        "de": "Sie liest jeden Abend vor dem Schlafengehen ein Buch.",
        "es": "Ella lee un libro todas las noches antes de dormir.",
        "it": "Lei legge un libro ogni sera prima di dormire.",
        "pl": "Ona co wieczór przed snem czyta książkę.",
        "sv": "Hon läser en bok varje kväll innan hon somnar.",
        "tr": "O her akşam yatmadan önce kitap okur.",
        "ru": "Каждый вечер перед сном она читает книгу.",
    },
    {
        "en": "A year has 365 days.",
        "de": "Ein Jahr hat 365 Tage.",
        "es": "Un año tiene 365 días.",
        "it": "Un anno ha 365 giorni.",
        "pl": "Rok ma 365 dni.",
        "sv": "Ett år har 365 dagar.",
        "tr": "Bir yılda 365 gün vardır.",
        "ru": "В году 365 дней.",
    },
    {
        "en": "Do you know where the post office is?",
        "de": "Weißt du, wo die Post ist?",
        "es": "¿Sabes dónde está la oficina de correos?",
        "it": "Sai dov'è l'ufficio postale?",
        "pl": "Czy wiesz, gdzie jest poczta?",
        "sv": "Vet du var postkontoret ligger?",
        "tr": "Postanenin nerede olduğunu biliyor musun?",
        "ru": "Ты знаешь, где находится почта?",
    },
    {
        "en": "The river flows through the middle of the city.",
        "de": "Der Fluss fließt mitten durch die Stadt.",
        "es": "El río pasa por el centro de la ciudad.",
        "it": "Il fiume scorre attraverso il centro della città.",
        "pl": "Rzeka płynie przez środek miasta.",
        "sv": "Floden rinner genom mitten av staden.",
        "tr": "Nehir şehrin ortasından akıyor.",
        "ru": "Река течёт через центр города.",
    },
    {
        "en": "My grandfather was born in 1950.",
        "de": "Mein Großvater wurde 1950 geboren.",
        "es": "Mi abuelo nació en 1950.",
        "it": "Mio nonno è nato nel 1950.",
        "pl": "Mój dziadek urodził się w 1950 roku.",
        "sv": "Min farfar föddes 1950.",
        "tr": "Dedem 1950 yılında doğdu.",
        "ru": "Мой дедушка родился в 1950 году.",
    },
    {
        "en": "Please close the window, it is cold.",
        "de": "Bitte schließ das Fenster, es ist kalt.",
        "es": "Por favor, cierra la ventana, hace frío.",
        "it": "Per favore, chiudi la finestra, fa freddo.",
        "pl": "Zamknij, proszę, okno, jest zimno.",
        "sv": "Stäng fönstret, är du snäll, det är kallt.",
        "tr": "Lütfen pencereyi kapat, hava soğuk.",
        "ru": "Пожалуйста, закрой окно, холодно.",
    },
    {
        "en": "The shop on the corner sells fresh bread.",
        "de": "Der Laden an der Ecke verkauft frisches Brot.",
        "es": "La tienda de la esquina vende pan fresco.",
        "it": "Il negozio all'angolo vende pane fresco.",
        "pl": "Sklep na rogu sprzedaje świeży chleb.",
        "sv": "Affären på hörnet säljer färskt bröd.",
        "tr": "Köşedeki dükkân taze ekmek satıyor.",
        "ru": "Магазин на углу продаёт свежий хлеб.",
    },
    {
        "en": "What time does the concert start tonight?",
        "de": "Wann beginnt das Konzert heute Abend?",
        "es": "¿A qué hora empieza el concierto esta noche?",
        "it": "A che ora inizia il concerto stasera?",
        "pl": "O której zaczyna się koncert dziś wieczorem?",
        "sv": "Hur dags börjar konserten i kväll?",
        "tr": "Konser bu akşam saat kaçta başlıyor?",
        "ru": "Во сколько начинается концерт сегодня вечером?",
    },
    {
        "en": "We are going to the mountains next week.",
        "de": "Wir fahren nächste Woche in die Berge.",
        "es": "La semana que viene vamos a la montaña.",
        "it": "La settimana prossima andiamo in montagna.",
        "pl": "W przyszłym tygodniu jedziemy w góry.",
        "sv": "Vi åker till bergen nästa vecka.",
        "tr": "Gelecek hafta dağlara gidiyoruz.",
        "ru": "На следующей неделе мы едем в горы.",
    },
    {
        "en": "The doctor said I should drink more water.",
        "de": "Der Arzt hat gesagt, ich soll mehr Wasser trinken.",
        "es": "El médico dijo que debería beber más agua.",
        "it": "Il medico ha detto che dovrei bere più acqua.",
        "pl": "Lekarz powiedział, że powinienem pić więcej wody.",
        "sv": "Läkaren sa att jag borde dricka mer vatten.",
        "tr": "Doktor daha fazla su içmem gerektiğini söyledi.",
        "ru": "Врач сказал, что мне нужно пить больше воды.",
    },
    {
        "en": "This road leads to the old castle.",
        "de": "Diese Straße führt zur alten Burg.",
        "es": "Este camino lleva al viejo castillo.",
        "it": "Questa strada porta al vecchio castello.",
        "pl": "Ta droga prowadzi do starego zamku.",
        "sv": "Den här vägen leder till det gamla slottet.",
        "tr": "Bu yol eski kaleye gider.",
        "ru": "Эта дорога ведёт к старому замку.",
    },
    {
        "en": "I have lost my keys again.",
        "de": "Ich habe schon wieder meine Schlüssel verloren.",
        "es": "He vuelto a perder las llaves.",
        "it": "Ho perso di nuovo le chiavi.",
        "pl": "Znowu zgubiłem klucze.",
        "sv": "Jag har tappat bort mina nycklar igen.",
        "tr": "Anahtarlarımı yine kaybettim.",
        "ru": "Я опять потерял ключи.",
    },
    {
        "en": "The bus stop is one hundred metres from here.",
        "de": "Die Bushaltestelle ist hundert Meter von hier entfernt.",
        "es": "La parada de autobús está a cien metros de aquí.",
        "it": "La fermata dell'autobus è a cento metri da qui.",
        "pl": "Przystanek autobusowy jest sto metrów stąd.",
        "sv": "Busshållplatsen ligger hundra meter härifrån.",
        "tr": "Otobüs durağı buradan yüz metre uzakta.",
        "ru": "Автобусная остановка в ста метрах отсюда.",
    },
    {
        "en": "Why is the sky blue?",
        "de": "Warum ist der Himmel blau?",
        "es": "¿Por qué el cielo es azul?",
        "it": "Perché il cielo è blu?",
        "pl": "Dlaczego niebo jest niebieskie?",
        "sv": "Varför är himlen blå?",
        "tr": "Gökyüzü neden mavi?",
        "ru": "Почему небо голубое?",
    },
    {
        "en": "Thank you very much for your help.",
        "de": "Vielen Dank für deine Hilfe.",
        "es": "Muchas gracias por tu ayuda.",
        "it": "Grazie mille per il tuo aiuto.",
        "pl": "Bardzo dziękuję za pomoc.",
        "sv": "Tack så mycket för din hjälp.",
        "tr": "Yardımın için çok teşekkür ederim.",
        "ru": "Большое спасибо за помощь.",
    },
    {
        "en": "Tomorrow the weather will be sunny and warm.",
        "de": "Morgen wird das Wetter sonnig und warm.",
        "es": "Mañana hará sol y calor.",
        "it": "Domani il tempo sarà soleggiato e caldo.",
        "pl": "Jutro będzie słonecznie i ciepło.",
        "sv": "I morgon blir vädret soligt och varmt.",
        "tr": "Yarın hava güneşli ve sıcak olacak.",
        "ru": "Завтра будет солнечно и тепло.",
    },
)

DEMO_IDS = tuple(f"demo-{i:03d}" for i in range(len(SENTENCES)))


def voice_settings(index: int) -> tuple[int, int]:
    """(speed in words per minute, pitch 0-99) of sentence ``index``, the same in every language."""
    return BASE_SPEED + _SPEED_STEPS[index % len(_SPEED_STEPS)], BASE_PITCH + _PITCH_STEPS[index % len(_PITCH_STEPS)]


def demo_version() -> str:
    """The cache folder name: a hash of everything that shapes the audio except espeak-ng's own version."""
    payload = json.dumps(
        [SENTENCES, DEMO_LANGUAGES, [voice_settings(i) for i in range(len(SENTENCES))]], ensure_ascii=False
    )
    return "v1-" + hashlib.sha256(payload.encode()).hexdigest()[:10]


def default_cache_dir() -> pathlib.Path:
    """babelgrid's cache root: ``$BABELGRID_CACHE``, else ``$XDG_CACHE_HOME/babelgrid``, else ``~/.cache/babelgrid``."""
    if os.environ.get("BABELGRID_CACHE"):
        return pathlib.Path(os.environ["BABELGRID_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "babelgrid"


def find_espeak() -> str:
    """Path of the espeak-ng executable; raises ``DatasetError`` with install instructions when it is missing."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise DatasetError(
            "espeak-ng is not installed (not found on PATH); the demo set is synthesised with it on first use. "
            "Install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), or "
            "use a recorded dataset instead (fleurs, folder:/path, manifest:/path)"
        )
    return path


class DemoSource:
    """The demo set as a ``Source``: ``languages()`` are ``DEMO_LANGUAGES``, ids ``demo-000`` ..., no splits.

    ``utterances(lang)`` synthesises that language's missing clips first; ``synthesize()`` makes them all at once.
    """

    name = "demo"

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, workers: int = SYNTH_WORKERS):
        root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.dir = root.resolve() / "demo" / demo_version()
        self.workers = max(1, int(workers))

    def languages(self) -> list[str]:
        return list(DEMO_LANGUAGES)

    def splits(self) -> list[str]:
        return []

    def clip_path(self, lang: str, index: int) -> pathlib.Path:
        return self.dir / lang / f"{DEMO_IDS[index]}.wav"

    def synthesize(self, languages: list[str] | None = None) -> int:
        """Synthesises every missing clip of ``languages`` (default: all); returns how many were written."""
        languages = self.languages() if languages is None else list(languages)
        for lang in languages:
            check_language(lang, self.languages(), "the demo set")
        todo = [(lang, i) for lang in languages for i in range(len(SENTENCES)) if not self.clip_path(lang, i).is_file()]
        if not todo:
            return 0
        espeak = find_espeak()
        for lang in languages:
            (self.dir / lang).mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
            # list() re-raises the first failure here.
            list(pool.map(lambda job: self._synthesize_one(espeak, *job), todo))
        return len(todo)

    def _synthesize_one(self, espeak: str, lang: str, index: int) -> None:
        target = self.clip_path(lang, index)
        speed, pitch = voice_settings(index)
        # espeak-ng writes as it speaks: into a temp file in the same folder, renamed only once complete, so that
        # an interrupted run never leaves a half clip under the final name (os.replace is atomic on one filesystem).
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".wav.tmp", dir=target.parent)
        os.close(fd)
        try:
            # -b 1: the text is UTF-8 whatever the locale says.
            cmd = [espeak, "-b", "1", "-v", lang, "-s", str(speed), "-p", str(pitch), "-w", tmp, SENTENCES[index][lang]]
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60)
            except subprocess.TimeoutExpired:
                raise DatasetError(f"espeak-ng hung on demo clip {lang}/{DEMO_IDS[index]} (over 60 s); retry") from None
            if result.returncode != 0 or os.path.getsize(tmp) <= 44:  # 44 bytes: a WAV header with no samples
                raise DatasetError(
                    f"espeak-ng failed to synthesise demo clip {lang}/{DEMO_IDS[index]} (exit {result.returncode}): "
                    f"{result.stderr.strip() or 'no audio written'}; check that `espeak-ng -v {lang} hello` works"
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), "the demo set")
        self.synthesize([lang])
        out = []
        for i, sentence_id in enumerate(DEMO_IDS):
            path = self.clip_path(lang, i)
            out.append(
                Utterance(
                    id=sentence_id,
                    lang=lang,
                    audio=str(path),
                    path=str(path),
                    transcription=SENTENCES[i][lang],
                    speaker=f"espeak-ng:{lang}",
                    duration_s=soundfile.info(str(path)).duration,  # header read only
                )
            )
        return out
